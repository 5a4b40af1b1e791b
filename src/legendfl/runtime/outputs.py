"""What every runtime leaves after a run: ``summary.json``, the exported model, the figures."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.files import write_atomic
from ..core.strategy import Strategy
from ..metrics.summary import summarize
from ..models.methods import get_method
from .context import RunContext


def write_outputs(ctx: RunContext, strategy: Strategy, records: list[dict], out: Path, wall_time_s: float, **extra) -> dict:
    cfg = ctx.cfg
    summary = {**summarize(records, cfg.target_accuracy), **strategy.summary(), "task": cfg.task, "model": cfg.model,
               "cost_model": cfg.cost_model, "fleet": cfg.fleet, "num_devices": cfg.num_devices,
               "wall_time_s": wall_time_s, **extra}
    task = strategy.evaluation_task()
    if get_method(task.method).export(task, ctx.backbone, str(out / "adapter"), ctx.train_cfg):
        write_atomic(out / "adapter" / "labels.json", json.dumps(ctx.label_names))
    try:
        from ..metrics.plots import run_plots

        summary["plots"] = run_plots(records, out)
    except ImportError:  # pragma: no cover - matplotlib missing
        summary["plots"] = []
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
