"""The round loop, once for every runtime (in the spirit of Flower's ``Strategy.start(grid)``).

Each round::

    tasks   = strategy.configure_round(rnd, transport.participants(rnd))
    outcome = transport.run_round(rnd, tasks)        # results, per-device timings and extras, who is missing
    metrics = strategy.aggregate_round(rnd, outcome.results)   (skipped when nobody answered)
    candidates evaluated on the server's validation split, the global model on the dev split
    one record (metrics.records) written

A **transport** turns tasks into results: the simulator's trains every device on the shared backbone and
times it with the fleet's cost model on a virtual clock (``runtime/simulator.py``); Flower's sends each
task to a SuperNode and times the round on the wall clock (``runtime/flower/transport.py``). Checkpoints,
update validation and a batched engine each belong here or in a transport, once.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.split import split_update_limit
from ..core.strategy import DeviceResult, DeviceTask, Strategy
from ..core.training import TrainConfig
from ..core.validation import UpdateLimit
from ..metrics.records import RecordWriter, RoundPoint, RoundRecord, device_entry
from .checkpoint import save_checkpoint
from .context import RunContext

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    """What a transport hands back for one round."""

    results: list[DeviceResult]  # devices that answered, each with its work and (measured) timing
    timings: dict[int, dict[str, float]]  # per answering device: the timing fields its record shows (seconds)
    waiting_s: dict[int, float]  # per answering device
    clock: dict[str, Any]  # the record's time and traffic fields (``VirtualClock.record_fields``)
    extras: dict[int, dict[str, Any]] = field(default_factory=dict)  # per device: fields only this runtime knows
    missing: dict[int, str] = field(default_factory=dict)  # device -> why it did not answer
    summary: str = ""  # one line for the log
    server: DeviceResult | None = None  # a split round's server result (core.split), handed to the strategy last


class Transport(Protocol):
    runtime: str  # "inprocess" | "flower"
    clock_kind: str  # "virtual" | "real"

    def participants(self, rnd: int) -> list[int]:
        """Devices that can get a task in round ``rnd``."""

    def partition_size(self, device_id: int) -> int:
        """How many training examples the device holds (bounds what its reply may claim)."""

    def run_round(self, rnd: int, tasks: dict[int, DeviceTask]) -> RoundOutcome:
        """Deliver the tasks, collect results and time the round."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of the transport (its clock)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class ClockState:
    """For transports whose only state across rounds is their clock (both built-in ones)."""

    clock: Any

    def state_dict(self) -> dict[str, Any]:
        return {"clock": self.clock}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clock = state["clock"]


def run_rounds(strategy: Strategy, transport: Transport, ctx: RunContext, writer: RecordWriter,
               start_round: int = 1, checkpoint: bool = True) -> list[dict]:
    """Drive ``strategy`` from ``start_round`` to ``ctx.cfg.rounds`` over ``transport``; after every round the
    record is appended and, with ``checkpoint``, the run's state saved (``runtime/checkpoint.py``)."""
    cfg = ctx.cfg
    for rnd in range(start_round, cfg.rounds + 1):
        wall0 = time.perf_counter()
        tasks = strategy.configure_round(rnd, transport.participants(rnd))
        outcome = transport.run_round(rnd, tasks)
        limits = {r.device_id: update_limit(ctx.train_cfg, transport.partition_size(r.device_id)) for r in outcome.results}
        if outcome.server is not None:  # a split round: every device ran the server's iterations at its own batch size
            limits = {d: split_update_limit(limit, outcome.server.num_steps, tasks[d].config.batch_size)
                      for d, limit in limits.items()}
        screening = strategy.screen(tasks, outcome.results, limits)
        accepted, rejected = screening.accepted, screening.rejected
        for dev, why in sorted(rejected.items()):
            log.warning("[%s] round %d: update of device %d rejected: %s", strategy.name, rnd, dev, why)
        server = [outcome.server] if outcome.server is not None else []  # a split round's server (core.split)
        agg = (strategy.aggregate_round(rnd, accepted + server) if accepted else
               {"skipped": "no device answered" if not outcome.results else "every update was rejected"})
        candidates = strategy.candidate_evaluations(rnd)
        if candidates:
            scores = {name: ctx.evaluate(t, "validation") for name, t in candidates.items()}
            agg.update(strategy.receive_evaluations(rnd, scores))
        config_log = strategy.round_log(tasks)
        devices = {str(r.device_id): device_entry(r, tasks[r.device_id], outcome.timings[r.device_id],
                                                  outcome.waiting_s[r.device_id], config_log,
                                                  {**outcome.extras.get(r.device_id, {}),
                                                   **({} if r.device_id in rejected else
                                                      screening.checks[r.device_id].record_fields())})
                   for r in outcome.results if r.device_id in tasks}
        record = RoundRecord(
            rnd, strategy.name, transport.runtime, transport.clock_kind, strategy.round_lr(rnd),
            cfg.cost_model if transport.clock_kind == "virtual" else None, outcome.clock, agg, devices,
            missing=[{"device": d, "reason": why, **outcome.extras.get(d, {})} for d, why in sorted(outcome.missing.items())],
            rejected=[{"device": d, "reason": why} for d, why in sorted(rejected.items())])
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            ev = ctx.evaluate(strategy.evaluation_task())
            record.accuracy, record.eval_loss = ev["accuracy"], ev["loss"]
            record.eval_metrics = {k: v for k, v in ev.items() if k not in ("accuracy", "loss")}
        record.wall_s = time.perf_counter() - wall0
        rec = record.to_json()
        writer.write(rec)
        if checkpoint:
            save_checkpoint(writer.path.parent, {"round": rnd, "config": cfg.to_json(), "strategy": strategy.state_dict(),
                                                 "transport": transport.state_dict(), "records": writer.records})
        _log_round(strategy, transport, rec, devices, outcome, cfg.rounds)
    return writer.records


def update_limit(train_cfg: TrainConfig, partition_size: int) -> UpdateLimit:
    """What a device holding ``partition_size`` examples can do in a round under ``train_cfg``."""
    return UpdateLimit(partition_size, train_cfg.local_steps(partition_size), train_cfg.max_examples(partition_size),
                       train_cfg.weight_decay)


def _log_round(strategy: Strategy, transport: Transport, rec: dict, devices: dict, outcome: RoundOutcome, rounds: int) -> None:
    if devices:
        params = sorted(v["trainable_params"] for v in devices.values())
        down = sorted(v["download_bytes"] for v in devices.values())
        up = sorted(v["upload_bytes"] for v in devices.values())
        log.info("[%s] round %d: trainable parameters per device %s..%s; traffic per device down %s..%s B, up %s..%s B",
                 strategy.name, rec["round"], f"{params[0]:,}", f"{params[-1]:,}", f"{down[0]:,}", f"{down[-1]:,}",
                 f"{up[0]:,}", f"{up[-1]:,}")
    depths = sorted(v.get("depth", 0) for v in devices.values()) or [0]
    point = RoundPoint.of(rec, f"{transport.clock_kind}_time_s")
    acc = f"{point.accuracy:.4f}" if point.evaluated else "  -   "
    log.info("[%s] round %3d/%d  acc %s  %s %9.1fs  round %7.2fs  wait %6.2fs  traffic %8.2f MB  depths %d..%d  wall %.1fs%s",
             strategy.name, point.round, rounds, acc, transport.clock_kind, point.time_s, point.round_time_s,
             point.mean_waiting_s, point.traffic_bytes / 1e6, depths[0], depths[-1], rec["wall_s"],
             f"  {outcome.summary}" if outcome.summary else "")
