"""The Flower runtime on this machine's loopback: a SuperLink and 3 SuperNodes over TLS with node auth.

Every process is started by ``LocalFederation`` and stopped by its PID (process group) when the module's
tests end; Flower's simulation engine (Ray) is never used. Bounded: each run has a timeout. The tiny random
BERT (conftest.py): what is compared is the runtimes' plumbing, bit for bit, not learning.
"""
from __future__ import annotations

import json
import threading
import time
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import TINY_BERT
from safetensors.torch import load_file

from legendfl.config import RunConfig
from legendfl.experiments.runner import run
from legendfl.runtime.flower.local import LocalFederation
from legendfl.runtime.flower.node import NodeSettings
from legendfl.runtime.flower.server_app import FederationSettings

pytestmark = pytest.mark.xdist_group("flower")  # their SuperLinks and SuperNodes start one after another, on one worker (pytest -n)

APP = Path(__file__).resolve().parents[1] / "deploy" / "flower"
DEPTHS = [6, 4, 2]
RUN_OPTIONS = f"""task = "sst2"
model = "{TINY_BERT}"
strategy = "legend"
num_devices = 3
rounds = 2
max_examples_per_device = 24
max_dev_examples = 32
max_length = 32
batch_size = 8
max_local_steps = 2
lr = 2e-3
legend.fixed_depths = {DEPTHS}
threads = 1
seed = 0
"""


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Session scope, not module: a worker that runs another module's test in between keeps it up.
@pytest.fixture(scope="session")
def federation(tmp_path_factory):
    """A SuperLink over TLS with node auth, 3 SuperNodes and one whose key was never registered: device 0 trains
    in its per-message ClientApp process, devices 1 and 2 in long-lived workers.

    Process isolation with `legendfl flower superexec`: each ServerApp and ClientApp process forks from one that
    imported Flower, legendfl and torch once (half the CPU of these runs, measured; Flower's own SuperExec, which
    starts a new Python process each time, runs the emulated fleet's test below)."""
    work = tmp_path_factory.mktemp("flower")
    (work / "legend.toml").write_text(RUN_OPTIONS)
    with LocalFederation(work / "federation", tls=True, node_auth=True, superexec="fork") as fed:
        fed.start_supernode("intruder", {"partition-id": 0}, register=False)  # its key was never registered
        sockets = fed.start_workers(["worker-1", "worker-2"])
        for i in range(3):
            node_config = {"partition-id": i, "num-partitions": 3, "threads": 1}
            if i > 0:  # these devices train in long-lived workers; device 0 in its per-message process
                node_config["worker-socket"] = sockets[i - 1]
            fed.start_supernode(f"node-{i}", node_config)
        yield work, fed


@pytest.mark.slow
def test_unauthenticated_supernode_is_refused(federation):
    _, fed = federation
    intruder = fed.processes["intruder"]
    deadline = time.monotonic() + 60
    while intruder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert intruder.poll() not in (None, 0), "a SuperNode with an unregistered key must not stay connected"
    assert "Failed to activate SuperNode" in fed.log("intruder")
    listed = json.loads(fed.flwr("supernode", "ls", "legendfl-local", "--format", "json").stdout)["nodes"]
    assert len(listed) == 3  # only the registered nodes


# One round each (LEGEND's test at the end covers later rounds' redistribution): HetLoRA sets ranks from device
# speed, and from round 2 on Flower's speeds are measured here while the simulator's are the fleet's, so only
# round 1 is comparable for it anyway. FedAdapter, FedSpine, FLoRA and FlexLoRA are compared the same way by
# `benchmarks/flower_parity.py` (BENCHMARKS.md), not here: each Flower run costs this suite 14-40 core-s.
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["hetlora", "fedexlora"])
def test_baselines_run_unchanged_over_flower(federation, strategy):
    """Every strategy plugs into both runtimes the same way: same per-device losses, same global model. FedEx-LoRA
    (no time-based decisions) for two rounds: round 2's tasks carry round 1's residual in the frozen weights."""
    work, fed = federation
    rounds = 2 if strategy == "fedexlora" else 1
    options = (RUN_OPTIONS.replace('strategy = "legend"', f'strategy = "{strategy}"').replace("rounds = 2", f"rounds = {rounds}")
               .replace(f"legend.fixed_depths = {DEPTHS}\n", ""))
    (work / f"{strategy}.toml").write_text(options)
    out = work / f"flower-{strategy}"
    status, log = fed.run(APP, {"config-file": str(work / f"{strategy}.toml"), "out-dir": str(out),
                                "round-timeout-s": 240.0}, timeout=480)
    assert status == "finished:completed", log[-4000:]
    reference = work / f"inprocess-{strategy}"
    # a Flower node trains its one device as the sequential engine does; HetLoRA's devices share passes in the
    # batched engine, equal to that up to fp32 rounding (tests/test_batched_engine.py), which this bit-level
    # comparison would see (in fp32, i.e. without bf16 hardware; bf16 autocast hid it where it ran)
    run(RunConfig.from_sources(tomllib.loads(options), {"out_dir": str(reference), "engine": "sequential"}))
    records, local_records = _records(out / "rounds.jsonl"), _records(reference / "rounds.jsonl")
    assert len(records) == len(local_records) == rounds
    for rec, local in zip(records, local_records):
        assert rec["missing"] == [] and sorted(rec["devices"]) == sorted(local["devices"]) == ["0", "1", "2"]
        for d, entry in rec["devices"].items():
            assert entry["train_loss"] == pytest.approx(local["devices"][d]["train_loss"], rel=1e-6)
            assert entry["upload_bytes"] == local["devices"][d]["upload_bytes"]
        assert rec["eval_loss"] == pytest.approx(local["eval_loss"], rel=1e-6)
        assert rec["accuracy"] == local["accuracy"]
    flower_adapter = out / "adapter" / "adapter_model.safetensors"
    assert flower_adapter.exists() == (strategy == "hetlora")  # LoRA strategies export a peft adapter
    if strategy == "hetlora":  # the global model, bit for bit
        local_adapter = load_file(reference / "adapter" / "adapter_model.safetensors")
        assert sorted(load_file(flower_adapter)) == sorted(local_adapter)
        for key, value in load_file(flower_adapter).items():
            assert torch.equal(local_adapter[key], value), key
    if strategy == "fedexlora":  # its global model with the LoRA and the residual merged, bit for bit
        flower_model = load_file(out / "merged_model" / "model.safetensors")
        local_model = load_file(reference / "merged_model" / "model.safetensors")
        assert sorted(flower_model) == sorted(local_model)
        assert all(torch.equal(local_model[k], v) for k, v in flower_model.items())
        # the residual travelled: round 2 downloads more than it uploads, in both runtimes
        assert all(d["download_bytes"] > d["upload_bytes"] for d in records[1]["devices"].values())


def test_settings_name_the_bad_field():
    with pytest.raises(ValueError, match="round-timeout-s"):
        FederationSettings.from_run_config({"round-timeout-s": "soon"})
    with pytest.raises(ValueError, match="allowed"):
        FederationSettings.from_run_config({"rounds": 3})
    with pytest.raises(ValueError, match="unknown option"):
        FederationSettings(options="roundz = 2").run_config()
    # the app's run config: config file < options (a strategy's options as a TOML table too) < out-dir
    cfg = FederationSettings(config_file="configs/default.toml", out_dir="elsewhere",
                             options='rounds = 2\nstrategy = "hetlora"\nhetlora.r_min = 2').run_config()
    assert (cfg.rounds, cfg.strategy, cfg.out_dir, cfg.lr) == (2, "hetlora", "elsewhere", 2e-3)
    assert cfg.strategy_options_resolved().r_min == 2 and cfg.strategy_options["legend"]["lcd"] == "fill"
    with pytest.raises(ValueError, match="partition-id"):
        NodeSettings.from_node_config({"num-partitions": 3})
    with pytest.raises(ValueError, match="emulate-device"):
        NodeSettings.from_node_config({"partition-id": 0, "emulate-device": -1})
    with pytest.raises(ValueError, match="num-partitions"):
        NodeSettings.from_node_config({"partition-id": 0, "num-partitions": 4}).check(RunConfig(num_devices=3))
    with pytest.raises(ValueError, match="legend.fixed_depths"):
        RunConfig.from_sources({"num_devices": 3, "fixed_depths": [6, 4]})


def test_a_device_file_is_labelled_by_the_servers_label_names(tmp_path):
    from legendfl.runtime.flower.node import local_examples

    rows = ["text\tlabel"] + [f"review number {i} was {'fine' if i % 2 else 'bad'}\t{'pos' if i % 2 else 'neu'}"
                              for i in range(40)]
    path = tmp_path / "device.tsv"
    path.write_text("\n".join(rows) + "\n")
    cfg = RunConfig(num_devices=3)
    settings = NodeSettings.from_node_config({"partition-id": 2, "data-file": str(path)})
    examples = local_examples(cfg, settings, ["neg", "neu", "pos"])
    assert examples and {y for _, _, y in examples} == {1, 2}  # 'neu' -> 1 and 'pos' -> 2 on the server's scale
    assert all((y == 2) == text.endswith("fine") for text, _, y in examples)
    with pytest.raises(ValueError, match="data-file"):
        local_examples(cfg, settings, ["negative", "positive"])


@pytest.mark.slow
@pytest.mark.xdist_group("flower_emulated")  # a federation of its own: may run beside the module's
def test_an_emulated_fleet_over_flower_makes_the_simulators_legend_decisions(tmp_path):
    """`legendfl flower local --workers --emulate 1`: node i emulates fleet entry i; LEGEND's depths (from the
    nodes' reports) and the global adapter equal the in-process simulation's."""
    from legendfl.runtime.flower.local import run_local

    SCALE = 0.25  # a node sleeps a quarter of its device's virtual round time
    NODES = 2  # fleet entries 0 and 1 (a TX2 and a Xavier NX) get different depths in round 2; a third node costs ~25 core-s

    # 2 rounds: the second's depths come from LCD
    options = RUN_OPTIONS.replace(f"legend.fixed_depths = {DEPTHS}\n", "").replace("num_devices = 3", f"num_devices = {NODES}")
    config = tmp_path / "emulated.toml"
    config.write_text(options.replace(f"num_devices = {NODES}\n", ""))
    status = run_local(config, NODES, tmp_path / "flower", workers=True, emulate_time_scale=SCALE, timeout_s=480)
    assert status == "finished:completed"
    records = _records(tmp_path / "flower" / "run" / "rounds.jsonl")
    reference = tmp_path / "inprocess"
    # a Flower node trains its one device as the sequential engine does; the batched engine equals that up to
    # fp32/bf16 rounding (tests/test_batched_engine.py), which this bit-level comparison would see
    run(RunConfig.from_sources(tomllib.loads(options), {"out_dir": str(reference), "engine": "sequential"}))
    local_records = _records(reference / "rounds.jsonl")

    def depths(recs):
        return [{d: v["depth"] for d, v in r["devices"].items()} for r in recs]

    assert depths(records) == depths(local_records)
    assert len(set(depths(records)[1].values())) > 1  # heterogeneous: LCD gave the devices different depths
    assert {v["depth"] for v in records[0]["devices"].values()} == {6}  # all L layers before any report
    for entry in records[1]["devices"].values():  # LCD predicted each device's time from the nodes' reports
        assert entry["predicted_time_s"] > 0
    for rec, local in zip(records, local_records):
        for d, entry in rec["devices"].items():
            emulated = entry["emulated"]
            assert emulated["device"] == int(d) and emulated["kind"] == local["devices"][d]["kind"]
            assert emulated["total_s"] == pytest.approx(local["devices"][d]["total_s"], rel=1e-3)
            assert entry["round_trip_s"] >= emulated["total_s"] * SCALE  # the node really took that long, scaled
    flower_adapter = load_file(tmp_path / "flower" / "run" / "adapter" / "adapter_model.safetensors")
    local_adapter = load_file(reference / "adapter" / "adapter_model.safetensors")
    for key, value in local_adapter.items():
        assert torch.equal(flower_adapter[key], value), key  # bit for bit


class _SilentGrid:
    """Stands in for Flower's grid: only nodes in ``answering`` reply (another one is dead)."""

    def __init__(self, answering):
        self.answering, self.sent = set(answering), {}

    def push_messages(self, messages):
        for i, msg in enumerate(messages):
            self.sent[f"m{i}"] = msg
        return list(self.sent)

    def pull_messages(self, ids):
        from types import SimpleNamespace

        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid), has_error=lambda: False)
                for mid in ids if self.sent[mid].dst_node_id in self.answering]


def test_exchange_gives_up_on_a_silent_node_after_the_timeout():
    from types import SimpleNamespace

    from legendfl.runtime.flower.transport import Federation

    grid = _SilentGrid(answering={11})
    fed = Federation(grid, RunConfig(num_devices=2), ["negative", "positive"])
    msgs = {0: SimpleNamespace(dst_node_id=11), 1: SimpleNamespace(dst_node_id=12)}
    t0 = time.monotonic()
    replies, missing = fed.exchange(msgs, timeout_s=1.5)
    elapsed = time.monotonic() - t0
    assert sorted(replies) == [0] and sorted(missing) == [1]
    assert "no reply within" in missing[1]
    assert 1.5 <= elapsed < 10.0  # gave up at the timeout, not at some later point


def test_the_forking_superexec_refuses_what_it_cannot_start_naming_the_option(tmp_path):
    from legendfl.runtime.flower.superexec import ForkingExecutor

    with pytest.raises(ValueError, match="--task-type must be one of"):
        ForkingExecutor("simulation")
    with pytest.raises(ValueError, match="--preload: no module named 'no_such_module_here'"):
        ForkingExecutor("clientapp", ("torch", "no_such_module_here"))
    with pytest.raises(ValueError, match="superexec must be one of"):
        LocalFederation(tmp_path, superexec="ray")


def test_flower_local_without_a_config_file_starts_from_legendfl_runs_defaults():
    """One set of defaults: `flower local` with options only builds the run configuration `legendfl run` builds from
    the same options as flags (the runtimes' equality, bit for bit, is the tests above), and both are the main
    job's (configs/default.toml) apart from what that file sets on purpose."""
    from legendfl.cli import build_config, make_parser
    from legendfl.config import load_config_file

    flower = FederationSettings(options="rounds = 3\nnum_devices = 3", out_dir="x").run_config()
    cli_cfg = build_config(make_parser().parse_args(["run", "--rounds", "3", "--num-devices", "3", "--out-dir", "x"]))
    assert flower.to_json() == cli_cfg.to_json()
    main_job = RunConfig.from_sources(load_config_file("configs/default.toml"))
    differing = {k for k, v in main_job.to_json().items() if RunConfig().to_json()[k] != v}
    assert differing == set(), differing  # the file spells the defaults out; it changes none of them


# Last in the module: it stops node 2 of the shared federation.
@pytest.mark.slow
def test_legend_over_tls_matches_the_inprocess_runtime_and_goes_on_without_a_killed_node(federation):
    """Three LEGEND rounds; node 2 is stopped after round 2. Every round, and the global adapter bit for bit, equal
    the in-process run in which device 2 is offline in round 3 (an availability trace): a missing node is handled
    as a missing simulated device."""
    work, fed = federation
    out = work / "flower-run"
    (work / "legend.toml").write_text(RUN_OPTIONS.replace("rounds = 2", "rounds = 3"))

    def kill_after_round_two():
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            path = out / "rounds.jsonl"
            if path.exists() and len(_records(path)) >= 2:
                fed.stop("node-2")
                return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_after_round_two, daemon=True)
    killer.start()
    status, log = fed.run(APP, {"config-file": str(work / "legend.toml"), "out-dir": str(out),
                                "round-timeout-s": 75.0}, timeout=480)
    killer.join(5)
    assert status == "finished:completed", log[-4000:]
    records = _records(out / "rounds.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3]
    for rec in records[:2]:
        assert rec["missing"] == []
        assert {int(d): v["depth"] for d, v in rec["devices"].items()} == dict(enumerate(DEPTHS))
        for dev, entry in rec["devices"].items():  # real measured timings, real bytes
            assert entry["forward_s"] > 0 and entry["backward_s"] > 0 and entry["round_trip_s"] > entry["train_s"]
            assert entry["upload_bytes"] > 0 and entry["hostname"]
        # deeper devices carry more LoRA tensors both ways
        sizes = [rec["devices"][str(d)]["download_bytes"] for d in range(3)]
        assert sizes[0] > sizes[1] > sizes[2]
    # the worker kept its process (torch and the model loaded once); the others got a new process per message
    pids = [{d: rec["devices"][d]["pid"] for d in ("0", "1")} for rec in records]
    assert pids[0]["1"] == pids[1]["1"] == pids[2]["1"] and len({p["0"] for p in pids}) == 3
    # a stopped SuperNode is offline at once: the SuperLink answers for it (or it is left out of the round), so the
    # round does not wait for its timeout
    assert [m["device"] for m in records[2]["missing"]] == [2]
    reason = records[2]["missing"][0]["reason"]
    assert "Node Unavailable" in reason or reason.startswith("offline"), reason
    assert records[2]["round_time_s"] < 75.0
    assert sorted(records[2]["devices"]) == ["0", "1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtime"] == "flower" and sorted(summary["devices"]) == ["0", "1", "2"]

    options = tomllib.loads(RUN_OPTIONS.replace("rounds = 2", "rounds = 3"))
    trace = work / "device-2-offline-in-round-3.json"
    trace.write_text(json.dumps({"2": [1, 1, 0]}))
    reference = work / "inprocess-run"
    # a Flower node trains its one device as the sequential engine does (the batched engine equals it up to fp32
    # rounding from its rank padding: tests/test_batched_engine.py), so the in-process reference is sequential
    run(RunConfig.from_sources(options, {"out_dir": str(reference), "availability_trace": str(trace), "engine": "sequential"}))
    local_records = _records(reference / "rounds.jsonl")
    assert [sorted(r["devices"]) for r in local_records] == [sorted(r["devices"]) for r in records]
    assert [r["accuracy"] for r in records] == pytest.approx([r["accuracy"] for r in local_records])
    assert [r["eval_loss"] for r in records] == pytest.approx([r["eval_loss"] for r in local_records], rel=1e-6)
    flower_adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    local_adapter = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert sorted(flower_adapter) == sorted(local_adapter)
    moved = 0
    for key, value in local_adapter.items():
        assert torch.equal(flower_adapter[key], value), key  # bit for bit, round 3 aggregated without device 2
        moved += int("lora_B" in key and bool(value.abs().sum() > 0))
    assert moved > 0  # training really changed the adapter
