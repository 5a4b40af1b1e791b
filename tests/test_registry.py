"""Strategies bring their own options: the registry, presets, config precedence, and a toy strategy
added the way docs/architecture.md says, registered from this file and run end to end."""
import json
from dataclasses import dataclass

import pytest
from conftest import TINY_BERT

from legendfl.cli import build_config, make_parser
from legendfl.config import RunConfig
from legendfl.core.lora_layout import LoraLayout
from legendfl.core.options import StrategyOptions, option, validate
from legendfl.core.strategy import DeviceTask
from legendfl.strategies import build_strategy, get_entry, strategy_names
from legendfl.strategies.fedlora import FedLoRA
from legendfl.strategies.hetlora import HetLoRA
from legendfl.strategies.legend import Legend
from legendfl.strategies.lora_base import LoraStrategy
from legendfl.strategies.registry import register_strategy, unregister


def test_every_strategy_and_preset_is_registered_with_its_class_and_fixed_options():
    names = strategy_names()
    for name in ("legend", "legend-no-depth", "legend-no-rank", "legend-literal", "fedlora", "fedlora-layers-d",
                 "fedlora-rank-rand", "fedlora-depth-<...>", "hetlora", "fedadapter", "full"):
        assert name in names
    assert get_entry("legend-no-depth").cls is Legend and get_entry("legend-no-depth").fixed == {"adaptive_depth": False}
    depth3 = get_entry("fedlora-depth-3")
    assert depth3.cls is FedLoRA and depth3.options().pretest == "depth-3"
    with pytest.raises(ValueError, match="pretest must be one of"):
        get_entry("fedlora-depth-x")
    with pytest.raises(ValueError, match="strategy must be one of"):
        get_entry("fedavg")


def test_a_preset_reads_its_base_section_and_fixes_its_own_options():
    s = build_strategy("legend-no-rank", {"legend": {"rank_step": 2, "rank_shape": "increasing", "ema": 0.5}}, seed=1)
    assert isinstance(s, Legend) and s.name == "legend-no-rank"
    assert s.options.rank_shape == "uniform" and s.options.rank_step == 2 and s.estimator.ema == 0.5
    assert build_strategy("fedlora-layers-d").name == "fedlora-layers-d"


def test_config_file_then_flags_with_sections_dotted_flags_and_old_flat_names(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("""rounds = 5
lr = 1e-3
ema = 0.5                 # an old flat name: LEGEND's and HetLoRA's rho
hetlora_r_max = 12        # an old flat name
[strategy]
name = "hetlora"
[strategy.hetlora]
r_min = 2
gamma = 0.8
""")
    ns = make_parser().parse_args(["run", "--config", str(path), "--rounds", "3", "--hetlora.r-min", "3",
                                   "--hetlora-gamma", "0.7", "--max-grad-norm", "none", "--bf16", "false"])
    with pytest.warns(FutureWarning) as caught:  # the old names still work, each with a warning naming the new one
        cfg = build_config(ns)
    said = " ".join(str(w.message) for w in caught)
    for old, new in (("'ema'", "hetlora.ema / legend.ema"), ("'hetlora_r_max'", "hetlora.r_max"),
                     ("'hetlora_gamma'", "hetlora.gamma")):
        assert f"option {old} is deprecated: use {new}" in said
    assert cfg.strategy == "hetlora" and cfg.rounds == 3 and cfg.lr == 1e-3  # flag over file; file over default
    opts = cfg.strategy_options_resolved()
    assert (opts.r_min, opts.r_max, opts.gamma, opts.ema) == (3, 12, 0.7, 0.5)
    assert cfg.strategy_options["legend"]["ema"] == 0.5
    train = cfg.train  # the training options, composed (flat in files and flags)
    assert type(train).__name__ == "TrainConfig" and train.max_grad_norm is None and train.bf16 is False
    assert cfg.to_json()["max_grad_norm"] is None and "train" not in cfg.to_json()
    # a run's config.json reads back to the same configuration
    again = RunConfig.from_record(json.loads(json.dumps(cfg.to_json())), "config.json")
    assert again.strategy_options_resolved() == opts and again.to_json() == cfg.to_json()
    strategy = cfg.build_strategy()
    assert isinstance(strategy, HetLoRA) and strategy.r_min == 3 and strategy.penalty.gamma == 0.7


def test_bad_options_name_the_strategy_and_field(tmp_path):
    for values, message in [({"hetlora.r_min": 9, "hetlora.r_max": 4}, "hetlora.r_min (9) must be <= hetlora.r_max"),
                            ({"strategy": {"name": "legend", "legend": {"lcd": "greedy"}}}, "legend.lcd must be one of"),
                            ({"strategy": {"legend": 3}}, "strategy.legend must be a table"),
                            ({"fedlora.pretest": "layers-q"}, "pretest must be one of"),
                            ({"fedadapter.width": 100}, "fedadapter.width must be <= 64")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            RunConfig.from_sources(values)
    bad = tmp_path / "bad.toml"
    bad.write_text("roundz = 3\n")
    from legendfl.config import load_config_file

    with pytest.raises(ValueError, match=r"unknown option\(s\) \['roundz'\]"):
        load_config_file(str(bad))


# --- a toy strategy, written by following docs/architecture.md ------------------------------------------------
@dataclass(frozen=True)
class TopLayerOptions(StrategyOptions):
    rank: int = option(2, "LoRA rank on the top layer", minimum=1, integer=True)

    def __post_init__(self) -> None:
        validate(self, "toy-top-layer.")


class TopLayerOnly(LoraStrategy):
    """Toy: every device trains LoRA on the last layer only; FedAvg."""

    Options = TopLayerOptions

    def make_global_layout(self, spec):
        return LoraLayout({spec.num_layers - 1: self.options.rank}, spec.num_layers)

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        return {d: self.task(rnd, d, self.global_layout) for d in device_ids}


@pytest.fixture
def toy_strategy():
    register_strategy("toy-top-layer", help="toy: LoRA on the top layer only")(TopLayerOnly)
    yield "toy-top-layer"
    unregister("toy-top-layer")


def test_options_without_the_hooks_base_class_are_refused_at_registration():
    @dataclass(frozen=True)
    class Bare:
        rank: int = 2

    class BareOptions(TopLayerOnly):
        Options = Bare

    with pytest.raises(TypeError, match="deriving from legendfl.core.options.StrategyOptions"):
        register_strategy("toy-bare", help="toy")(BareOptions)
    assert "toy-bare" not in strategy_names()
    # the hooks do nothing unless a strategy overrides them
    TopLayerOptions().check_run(RunConfig())
    TopLayerOptions().check_num_layers(1)
    assert TopLayerOptions.legacy == {}


def test_a_toy_strategy_registered_from_a_test_file_runs_end_to_end(tmp_path, toy_strategy):
    from legendfl.metrics.summary import read_records
    from legendfl.experiments.runner import run

    cfg = RunConfig.from_sources({"model": TINY_BERT, "strategy": toy_strategy, "toy-top-layer.rank": 3, "num_devices": 2, "rounds": 2,
                                  "max_local_steps": 2, "max_examples_per_device": 32, "max_dev_examples": 32,
                                  "max_length": 32, "out_dir": str(tmp_path)})
    summary = run(cfg)
    records = read_records(tmp_path / "rounds.jsonl")
    assert [r["strategy"] for r in records] == [toy_strategy] * 2 and summary["final_accuracy"] is not None
    for rec in records:
        assert {v["depth"] for v in rec["devices"].values()} == {1} and {tuple(v["ranks"]) for v in rec["devices"].values()} == {(3,)}
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["layers_to_transform"] == [5]
    with pytest.raises(ValueError, match="toy-top-layer.rank must be >= 1"):
        RunConfig.from_sources({"strategy": toy_strategy, "toy-top-layer.rank": 0})


def test_a_plugin_package_registers_a_strategy_a_client_method_and_a_fleet(tmp_path, monkeypatch, caplog):
    """core/plugins.py: an installed package's ``legendfl.plugins`` entry point (stubbed here; a broken one beside
    it) brings a strategy that trains with its own client method, task configuration and local term, and a fleet
    name; the CLI and runs see them, and nothing in core/, runtime/ or the Flower payloads names them."""
    import importlib.metadata

    from legendfl.core import plugins
    from legendfl.fleet.devices import load_fleet
    from legendfl.metrics.summary import read_records
    from legendfl.experiments.runner import run

    points = [importlib.metadata.EntryPoint("example", "legendfl_plugin_example", plugins.GROUP),
              importlib.metadata.EntryPoint("broken", "no_such_module_of_anyone", plugins.GROUP)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [p for p in points if p.group == group])
    monkeypatch.setattr(plugins, "_loaded", {})
    with pytest.raises(ValueError, match="strategy must be one of"):
        RunConfig(strategy="plugin-bottom-layer")  # not loaded yet
    try:
        with caplog.at_level("WARNING"):
            assert plugins.load_plugins() == {"example": "legendfl_plugin_example"}
        assert "plugin 'broken'" in caplog.text and "no_such_module_of_anyone" in caplog.text
        assert len(load_fleet("plugin-jetsons", 4)) == 4
        cfg = RunConfig.from_sources({"model": TINY_BERT, "strategy": "plugin-bottom-layer", "plugin-bottom-layer.rank": 2,
                                      "num_devices": 2, "rounds": 1, "max_local_steps": 1, "max_examples_per_device": 16,
                                      "max_dev_examples": 16, "max_length": 16, "fleet": "plugin-jetsons",
                                      "out_dir": str(tmp_path)})
        run(cfg)
        devices = read_records(tmp_path / "rounds.jsonl")[0]["devices"]
        assert {v["depth"] for v in devices.values()} == {6} and {tuple(v["ranks"]) for v in devices.values()} == {(2,)}
        # the plugin's own task config reached its method, and its own local term ran on every device
        reported = json.loads((tmp_path / "summary.json").read_text())["plugin_square"]
        assert sorted(reported) == ["0", "1"] and all(end != start > 0 for start, end in reported.values())
        # and both travel over Flower as they are (the payloads know no kind of config or term)
        from legendfl_plugin_example import BottomLayerConfig, LoraSquarePull

        from legendfl.core.strategy import DeviceTask
        from legendfl.runtime.flower.messages import decode_task, encode_task

        task = DeviceTask(0, 1, {}, BottomLayerConfig(2, 6), "plugin-lora", local_terms=(LoraSquarePull(0.5),))
        back = decode_task(encode_task(task, {}, []))[0]
        assert (back.config, back.local_terms, back.method) == (task.config, task.local_terms, "plugin-lora")
    finally:
        unregister("plugin-bottom-layer")


def test_a_runs_config_json_reads_back_with_its_training_options(tmp_path):
    """RunConfig holds the training options in ``train``; every reader of a run's flat config.json (re-timing,
    pruning, resume) must still see them, the seed above all."""
    from legendfl.experiments.retiming import run_config_values

    cfg = RunConfig.from_sources({"seed": 3, "batch_size": 4, "rounds": 2, "hetlora.r_min": 3})
    assert (cfg.train.seed, cfg.train.batch_size, cfg.rounds) == (3, 4, 2)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_json()))
    values = run_config_values(tmp_path)
    assert (values["seed"], values["batch_size"]) == (3, 4)
    again = RunConfig.from_sources(values)
    assert again.train == cfg.train and again.to_json() == cfg.to_json()
    with pytest.raises(ValueError, match="seed must be >= 0"):
        RunConfig.from_sources({"seed": -1})
