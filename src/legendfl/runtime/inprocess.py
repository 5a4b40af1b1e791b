"""The in-process runtime: one process, one shared frozen base model for all simulated devices.

Each round: the strategy configures a task per device; each device trains in turn on the shared backbone
(its LoRA is injected and removed again, never a model copy per device); the fleet's cost model turns the
work each device really did into time; the virtual clock closes the round; the strategy aggregates; the
global model is evaluated every ``eval_every`` rounds. Records go to ``rounds.jsonl`` as they are made.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.strategy import Strategy
from ..fleet.cost_model import capacity_report, device_timing, timed_by
from ..fleet.devices import Fleet
from ..fleet.virtual_clock import VirtualClock
from ..models.backbone import Backbone
from ..models.trainer import TokenizedData, TrainConfig
from . import executors


@dataclass
class SimulationSetup:
    backbone: Backbone
    train: TokenizedData
    dev: TokenizedData
    partitions: list[list[int]]
    fleet: Fleet
    train_cfg: TrainConfig
    rounds: int
    eval_every: int = 1
    report_noise: float = 0.0
    seed: int = 0
    cost_model: str = "profile"
    label_names: list[str] = field(default_factory=list)
    partition_stats: list[dict] = field(default_factory=list)
    validation: TokenizedData | None = None  # the server's held-out split for choosing between candidates


def run_simulation(strategy: Strategy, setup: SimulationSetup, out_dir: Path,
                   progress: Callable[[str], None] = print) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    device_ids = list(range(len(setup.fleet)))
    if len(setup.partitions) != len(device_ids):
        raise ValueError(f"{len(setup.partitions)} partitions for {len(device_ids)} devices")
    strategy.initialize(setup.backbone.spec, device_ids)
    clock = VirtualClock()
    data = executors.DeviceData(setup.backbone, setup.train, setup.train_cfg)
    records: list[dict] = []
    records_path = out_dir / "rounds.jsonl"
    records_path.write_text("")
    for rnd in range(1, setup.rounds + 1):
        wall0 = time.perf_counter()
        tasks = strategy.configure_round(rnd, device_ids)
        results, timings, states, works, devices_log = [], {}, {}, {}, {}
        for dev in sorted(tasks):
            task = tasks[dev]
            result = executors.train(task, data, setup.partitions[dev])
            state = setup.fleet.state(dev, rnd)
            work = executors.work_of(task, result, setup.backbone.num_layers)
            timing = device_timing(state, work, setup.cost_model)
            result.report = capacity_report(state, work, timing, noise=setup.report_noise, seed=setup.seed)
            results.append(result)
            timings[dev], states[dev], works[dev] = timing, state, work
        down = {d: w.download_bytes for d, w in works.items()}
        up = {d: w.upload_bytes for d, w in works.items()}
        entry = clock.advance(rnd, timings, down, up)
        agg = strategy.aggregate_round(rnd, results)
        candidates = strategy.candidate_evaluations(rnd)
        if candidates:
            if setup.validation is None:
                raise ValueError(f"validation_examples must be > 0 for strategy {strategy.name!r} (it compares candidate models)")
            scores = {name: executors.evaluate(t, setup.backbone, setup.validation, setup.train_cfg) for name, t in candidates.items()}
            agg.update(strategy.receive_evaluations(rnd, scores))
        config_log = strategy.round_log(tasks)
        for r in results:
            d = r.device_id
            devices_log[str(d)] = {
                "kind": setup.fleet.devices[d].kind, "mode": states[d].mode, "gflops": states[d].gflops,
                "timed_by": timed_by(states[d], setup.cost_model),
                "uplink_mbps": round(states[d].uplink_mbps, 3), "downlink_mbps": round(states[d].downlink_mbps, 3),
                **{k: round(v, 4) for k, v in timings[d].to_json().items()}, "waiting_s": round(entry.waiting_s[d], 4),
                "examples": r.num_examples, "tokens": r.num_tokens, "forward_flops": r.forward_flops,
                "backward_flops": r.backward_flops, "download_bytes": down[d], "upload_bytes": up[d],
                "train_loss": round(r.train_loss, 5), "wall_s": round(r.wall_time_s, 3),
                "trainable_params": int(sum(v.numel() for v in tasks[d].params.values())),
                **config_log.get(str(d), {}), "work": works[d].to_json(),
            }
        rec = {"round": rnd, "strategy": strategy.name, "lr": strategy.round_lr(rnd), "cost_model": setup.cost_model,
               **clock.record_fields(entry), "accuracy": None, "eval_loss": None, "aggregation": agg, "devices": devices_log}
        if rnd % setup.eval_every == 0 or rnd == setup.rounds:
            ev = executors.evaluate(strategy.evaluation_task(), setup.backbone, setup.dev, setup.train_cfg)
            rec["accuracy"], rec["eval_loss"] = ev["accuracy"], ev["loss"]
        rec["wall_s"] = time.perf_counter() - wall0
        records.append(rec)
        with records_path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        depths = sorted(v.get("depth", 0) for v in devices_log.values())
        params = sorted(v["trainable_params"] for v in devices_log.values())
        progress(f"[{strategy.name}] round {rnd}: trainable parameters per device {params[0]:,}..{params[-1]:,}; "
                 f"traffic per device down {min(down.values()):,}..{max(down.values()):,} B, "
                 f"up {min(up.values()):,}..{max(up.values()):,} B")
        acc = f"{rec['accuracy']:.4f}" if rec["accuracy"] is not None else "  -   "
        progress(f"[{strategy.name}] round {rnd:3d}/{setup.rounds}  acc {acc}  virtual {clock.now_s:9.1f}s  "
                 f"round {entry.round_time_s:7.2f}s  wait {entry.mean_waiting_s:6.2f}s  "
                 f"traffic {clock.traffic_bytes / 1e6:8.2f} MB  depths {depths[0]}..{depths[-1]}  wall {rec['wall_s']:.1f}s")
    return records
