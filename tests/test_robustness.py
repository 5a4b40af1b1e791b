"""A server that one bad device cannot break, and strategies whose state a checkpoint cannot miss."""
import copy

import pytest
import torch
from conftest import TINY_BERT

from legendfl.config import RunConfig
from legendfl.core.strategy import DeviceResult
from legendfl.core.work import DeviceTiming, DeviceWork
from legendfl.fleet.devices import load_fleet
from legendfl.metrics.records import RecordWriter
from legendfl.runtime.context import RunContext
from legendfl.runtime.loop import run_rounds
from legendfl.runtime.simulator import SimulatorTransport
from legendfl.strategies import get_entry, registered_bases

SMALL = {"model": TINY_BERT, "num_devices": 3, "rounds": 2, "max_local_steps": 2, "max_examples_per_device": 32, "max_dev_examples": 32,
         "max_length": 32, "validation_examples": 30}


class Poisoned(SimulatorTransport):
    """The simulator, but device 1's upload is corrupted (or, with ``poison=None``, device 1 never answers)."""

    def __init__(self, ctx, fleet, poison):
        super().__init__(ctx, fleet)
        self.poison = poison

    def run_round(self, rnd, tasks):
        outcome = super().run_round(rnd, tasks)
        for r in outcome.results:
            if r.device_id == 1 and self.poison is not None:
                self.poison(r)
        if self.poison is None:
            outcome.results = [r for r in outcome.results if r.device_id != 1]
            outcome.missing[1] = "did not answer"
        return outcome


def _nan(r):
    key = next(k for k in r.params if "lora_B" in k or "adapter_up" in k)
    r.params[key][0, 0] = float("nan")


def _shape(r):
    key = next(k for k in r.params if "lora_A" in k or "adapter_down" in k)
    r.params[key] = r.params[key][:-1]


def _scaled(r):
    r.params = {k: v * 1e6 for k, v in r.params.items()}


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    cache = {}

    def get(strategy):
        if strategy not in cache:
            cfg = RunConfig.from_sources(SMALL, {"strategy": strategy, "max_update_norm": 1e3,
                                                 "out_dir": str(tmp_path_factory.mktemp(strategy))})
            cache[strategy] = (cfg, RunContext.for_simulation(cfg))
        return cache[strategy]

    return get


def _run(cfg, ctx, poison, out):
    strategy = cfg.build_strategy()
    fleet = load_fleet(cfg.fleet, cfg.num_devices, cfg.seed)
    strategy.initialize(ctx.backbone.spec, list(range(len(fleet))))
    records = run_rounds(strategy, Poisoned(ctx, fleet, poison), ctx, RecordWriter(out), checkpoint=False)
    return strategy, records


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["legend", "hetlora"])
def test_a_poisoned_update_is_rejected_and_the_global_model_equals_the_run_without_that_device(tmp_path, contexts, strategy):
    cfg, ctx = contexts(strategy)
    absent, _ = _run(cfg, ctx, None, tmp_path / "absent")
    for name, poison, reason in [("nan", _nan, "NaN or Inf"), ("shape", _shape, "shape"), ("scaled", _scaled, "exceeds max_update_norm")]:
        got, records = _run(cfg, ctx, poison, tmp_path / name)
        for rec in records:
            assert [r["device"] for r in rec["rejected"]] == [1] and reason in rec["rejected"][0]["reason"]
            assert "1" in rec["devices"]  # its work and traffic are still recorded
        assert got.global_params.keys() == absent.global_params.keys()
        for key, value in absent.global_params.items():
            assert torch.equal(got.global_params[key], value), (name, key)
        assert all(torch.isfinite(v).all() for v in got.global_params.values())


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__") and hasattr(b, "__dict__") and type(a) is type(b):
        return _same(vars(a), vars(b))
    return a == b


def _fake_results(tasks, rnd):
    out = []
    for d, t in tasks.items():
        params = {k: v + 0.01 * (d + 1) for k, v in t.params.items()}
        work = DeviceWork(1.0, 1.0, 10, 10, trained_depth=max(1, t.layout.depth if t.layout else 1), rank_sum=4,
                          lora_upload_bytes=8)
        out.append(DeviceResult(d, rnd, params, num_examples=5 + d, work=work,
                                timing=DeviceTiming(0.1, 1.0 + d, 2.0 * (d + 1), 0.3 * (d + 1)),
                                metrics={"tail_norm": 0.5, "tail_norm_start": 1.0}))
    return out


@pytest.mark.parametrize("name", sorted(registered_bases()))
def test_every_strategy_declares_all_the_state_a_round_changes(backbone, name):
    """A checkpoint saves ``STATE``; a new strategy that forgets an attribute a round changes fails here, and
    a strategy restored from its state_dict configures the next round exactly like the original."""
    strategy = get_entry(name).cls(seed=0, rounds=6)
    devices = [0, 1, 2, 3, 4, 5]
    strategy.initialize(backbone.spec, devices)
    initial = copy.deepcopy(vars(strategy))
    for rnd in (1, 2, 3):
        tasks = strategy.configure_round(rnd, devices)
        strategy.aggregate_round(rnd, _fake_results(tasks, rnd))
        candidates = strategy.candidate_evaluations(rnd)
        if candidates:
            strategy.receive_evaluations(rnd, {n: {"accuracy": 0.5 + 0.01 * i} for i, n in enumerate(candidates)})
    changed = {k for k, v in vars(strategy).items() if k not in initial or not _same(initial[k], v)}
    assert changed <= set(strategy.state_attributes()), f"{name}: not in STATE: {changed - set(strategy.state_attributes())}"
    restored = get_entry(name).cls(seed=0, rounds=6)
    restored.initialize(backbone.spec, devices)
    restored.load_state_dict(copy.deepcopy(strategy.state_dict()))
    a, b = strategy.configure_round(4, devices), restored.configure_round(4, devices)
    assert a.keys() == b.keys()
    for d in a:
        assert _same(a[d].params, b[d].params) and a[d].layout == b[d].layout and a[d].adapter == b[d].adapter
