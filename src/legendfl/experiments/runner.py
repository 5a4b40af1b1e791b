"""One run in the in-process simulator from a :class:`RunConfig`: fleet, context, transport; the rest is
``runtime/run_session.py`` (shared with the Flower ServerApp).

A run's folder is never overwritten by accident: a run into a folder that already holds files refuses unless
``overwrite`` is set (the old outputs are then removed once the new run's inputs are validated);
``resume_run`` continues a crashed run from its last checkpoint to the same result an uninterrupted run
gives, and refuses if its input files changed since.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import RunConfig
from ..fleet.availability import Availability, run_availability
from ..fleet.devices import Fleet, load_fleet
from ..runtime.context import RunContext
from ..runtime.run_session import execute_run
from ..runtime.simulator import SimulatorTransport

log = logging.getLogger(__name__)


def _simulation_context(cfg: RunConfig) -> RunContext:
    ctx = RunContext.for_simulation(cfg)
    sizes = [s["examples"] for s in ctx.partition_stats]
    log.info("partition %s (alpha %s) over %d devices: sizes min %d / max %d; per device: %s%s", cfg.partition,
             cfg.dirichlet_alpha, cfg.num_devices, min(sizes), max(sizes),
             ", ".join(f"{s['device']}:{s['examples']}{s['label_counts']}" for s in ctx.partition_stats[:12]),
             " ..." if len(sizes) > 12 else "")
    return ctx


def _simulator(cfg: RunConfig, ctx: RunContext, fleet: Fleet | None = None,
               availability: Availability | None = None) -> SimulatorTransport:
    fleet = fleet or load_fleet(cfg.fleet, cfg.num_devices, cfg.train.seed)
    log.info("fleet %s: %s", fleet.name, ", ".join(sorted({d.kind for d in fleet.devices})[:6]))
    return SimulatorTransport(ctx, fleet, availability or run_availability(cfg, fleet))


def run(cfg: RunConfig, *, overwrite: bool = False) -> dict:
    fleet = load_fleet(cfg.fleet, cfg.num_devices, cfg.train.seed)  # fleet and trace are refused before the model loads
    availability = run_availability(cfg, fleet)
    return execute_run(cfg, cfg.out_dir, make_context=_simulation_context, overwrite=overwrite,
                       make_transport=lambda c, ctx: _simulator(c, ctx, fleet, availability))


def resume_run(out_dir: str | Path) -> dict:
    """Continue the run in ``out_dir`` from its last checkpoint (its own configuration, its own folder)."""
    return execute_run(None, out_dir, make_context=_simulation_context, make_transport=_simulator, resume=True)
