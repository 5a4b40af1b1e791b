"""One run in the in-process simulator from a :class:`RunConfig`: context, fleet, strategy, rounds, outputs.

A run's folder is never overwritten by accident: a run into a folder that already holds files refuses unless
``overwrite`` is set; ``resume_run`` continues a crashed run from its last checkpoint to the same result an
uninterrupted run gives.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import RunConfig
from .core.files import write_atomic
from .fleet.availability import run_availability
from .fleet.devices import load_fleet
from .metrics.records import RecordWriter
from .runtime.checkpoint import CHECKPOINT, load_checkpoint, restore
from .runtime.context import RunContext
from .runtime.loop import run_rounds
from .runtime.outputs import write_outputs
from .runtime.simulator import SimulatorTransport

log = logging.getLogger(__name__)


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse one that holds files unless ``overwrite`` (then a stale checkpoint is removed)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"out_dir {str(out)!r} already holds files (an earlier run?); pass --resume {out} to "
                             f"continue its run, --overwrite to replace it, or another --out-dir")
        (out / CHECKPOINT).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".legendfl-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"out_dir {str(out)!r} cannot be written: {err.strerror or err}") from None


def run(cfg: RunConfig, *, overwrite: bool = False) -> dict:
    out = Path(cfg.out_dir)
    strategy = cfg.build_strategy()
    fleet = load_fleet(cfg.fleet, cfg.num_devices, cfg.seed)
    availability = run_availability(cfg, fleet)  # a bad trace is refused before the model loads
    prepare_out_dir(out, overwrite)
    ctx = RunContext.for_simulation(cfg)
    strategy.initialize(ctx.backbone.spec, list(range(len(fleet))))
    write_atomic(out / "config.json", json.dumps(cfg.to_json(), indent=2))
    write_atomic(out / "partition.json", json.dumps(ctx.partition_stats, indent=1))
    sizes = [s["examples"] for s in ctx.partition_stats]
    log.info("partition %s (alpha %s) over %d devices: sizes min %d / max %d; per device: %s%s", cfg.partition,
             cfg.dirichlet_alpha, cfg.num_devices, min(sizes), max(sizes),
             ", ".join(f"{s['device']}:{s['examples']}{s['label_counts']}" for s in ctx.partition_stats[:12]),
             " ..." if len(sizes) > 12 else "")
    log.info("fleet %s: %s", fleet.name, ", ".join(sorted({d.kind for d in fleet.devices})[:6]))
    t0 = time.perf_counter()
    records = run_rounds(strategy, SimulatorTransport(ctx, fleet, availability), ctx, RecordWriter(out))
    return _finish(ctx, strategy, records, out, t0)


def _finish(ctx: RunContext, strategy, records: list[dict], out: Path, t0: float) -> dict:
    """Outputs of a finished run; its checkpoint is then no longer needed (the run is complete)."""
    summary = write_outputs(ctx, strategy, records, out, time.perf_counter() - t0)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return summary


def resume_run(out_dir: str | Path) -> dict:
    """Continue the run in ``out_dir`` from its last checkpoint (its own configuration, its own folder)."""
    out = Path(out_dir)
    state = load_checkpoint(out)
    cfg = RunConfig(**{**state["config"], "out_dir": str(out)})
    strategy = cfg.build_strategy()
    fleet = load_fleet(cfg.fleet, cfg.num_devices, cfg.seed)
    ctx = RunContext.for_simulation(cfg)
    strategy.initialize(ctx.backbone.spec, list(range(len(fleet))))
    transport = SimulatorTransport(ctx, fleet)
    start, done = restore(state, strategy, transport)
    log.info("resuming %s in %s after round %d of %d", cfg.strategy, out, start - 1, cfg.rounds)
    t0 = time.perf_counter()
    records = run_rounds(strategy, transport, ctx, RecordWriter(out, done), start_round=start)
    return _finish(ctx, strategy, records, out, t0)
