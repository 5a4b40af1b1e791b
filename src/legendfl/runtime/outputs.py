"""What every runtime leaves after a run: ``summary.json``, the exported model, the figures.

The model: where the client method has a standard format it goes to the method's folder (LoRA: a peft adapter
in ``adapter/``; pruned LoRA: a pruned model with the LoRA merged in ``pruned_model/``); otherwise (bottleneck
adapters, full fine-tuning, plugins without an export) the global tensors under their canonical names go to
``global_params.safetensors``, so no run's trained model is lost.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save

from ..core.files import staged_directory, write_atomic
from ..core.strategy import Strategy
from ..methods.base import get_method
from ..metrics.summary import summarize
from .context import RunContext

GLOBAL_PARAMS = "global_params.safetensors"


def write_outputs(ctx: RunContext, strategy: Strategy, records: list[dict], out: Path, wall_time_s: float, **extra) -> dict:
    cfg = ctx.cfg
    summary = {**summarize(records, cfg.target_accuracy), **strategy.summary(), "task": cfg.task, "model": cfg.model,
               "cost_model": cfg.cost_model, "fleet": cfg.fleet, "num_devices": cfg.num_devices,
               "chance_accuracy": ctx.task.chance_accuracy if ctx.task is not None else None, "wall_time_s": wall_time_s, **extra}
    task = strategy.evaluation_task()
    method = get_method(task.method)
    with staged_directory(out / method.export_name) as staging:  # a folder that appears whole or not at all
        exported = method.export(task, ctx.backbone, str(staging), ctx.train_cfg)
        if exported:
            write_atomic(staging / "labels.json", json.dumps(ctx.label_names))
    if not exported:
        # one metadata entry: safetensors writes several in a per-process order, and the bytes would differ
        meta = {"legendfl": json.dumps({"strategy": strategy.name, "method": task.method, "model": cfg.model,
                                        "labels": ctx.label_names})}
        write_atomic(out / GLOBAL_PARAMS, save({k: v.contiguous() for k, v in task.params.items()}, metadata=meta))
    try:
        from ..metrics.plots import run_plots

        summary["plots"] = run_plots(records, out)
    except ImportError:  # pragma: no cover - matplotlib missing
        summary["plots"] = []
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
