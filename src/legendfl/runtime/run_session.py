"""One run from start to outputs, for every runtime: the only place that sets a run up and tears it down.

:func:`execute_run` locks the folder, starts afresh or continues from the checkpoint (refusing other settings
or changed input files, ``run_folder.py``; a run stopped before its first checkpoint is made again from round 1),
builds the strategy and the runtime's context and transport, runs the round loop (``loop.py``), writes the
outputs (``outputs.py``) and drops the checkpoint. A runtime supplies only what differs: how to build its
context and transport, and what it adds to config and summary.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import RunConfig
from ..core.files import write_atomic
from ..metrics.records import RecordWriter
from .checkpoint import CHECKPOINT, has_checkpoint, load_checkpoint, restore
from .context import RunContext
from .loop import Transport, run_rounds
from .outputs import write_outputs
from .run_folder import RunFolder, check_inputs, differing_settings, input_fingerprint, recorded_inputs

log = logging.getLogger(__name__)


def check_rank(cfg: RunConfig, ctx: RunContext) -> None:
    """A LoRA rank above the smaller side of the model's smallest LoRA module adds nothing a full-rank update lacks
    (and at 10^5 takes minutes and gigabytes before round 1): refused, naming the bound."""
    bound = ctx.backbone.spec.max_lora_rank
    if bound is not None and cfg.lora_rank > bound:
        raise ValueError(f"lora_rank must be at most {bound} for model {cfg.model!r} (the smaller side of its "
                         f"smallest LoRA module), got {cfg.lora_rank}")


def execute_run(cfg: RunConfig | None, out: str | Path, *, make_context: Callable[[RunConfig], RunContext],
                make_transport: Callable[[RunConfig, RunContext], Transport], overwrite: bool = False,
                resume: bool = False, config_extra: dict[str, Any] | None = None,
                summary_extra: Callable[[Transport], dict[str, Any]] | None = None) -> dict:
    """Run ``cfg`` into ``out`` (``resume``: continue the run there from its checkpoint; with ``cfg`` too, only
    if the checkpoint's settings equal it). Returns the summary."""
    out = Path(out)
    with RunFolder(out) as folder:
        state, again = None, False
        if resume:
            started = folder.recorded_config()
            if not has_checkpoint(out) and (out / "summary.json").exists():
                raise ValueError(f"resume: the run in {out} has finished (summary.json, no checkpoint); nothing to resume")
            if has_checkpoint(out) or started is None:
                state = load_checkpoint(out)
                recorded = RunConfig.from_record({**state["config"], "out_dir": str(out)}, f"the checkpoint in {out}")
            else:  # stopped before its first checkpoint: nothing to continue from, so the run is made again
                again = True
                recorded = RunConfig.from_record({**started, "out_dir": str(out)}, f"{out / 'config.json'}")
            if cfg is not None:
                differ = differing_settings(recorded.to_json(), cfg.to_json())
                if differ:
                    raise ValueError(f"the run in {out} was made with other settings (differing: {', '.join(differ)}); "
                                     f"start afresh in another folder, or with overwrite")
            cfg = recorded
            check_inputs(recorded_inputs(out), cfg.to_json(), f"the run in {out}")
        else:
            folder.check_empty(overwrite)
        assert cfg is not None
        if cfg.threads:  # the process's torch threads: set here, at the runtime's entry, never by a constructor
            torch.set_num_threads(cfg.threads)
        strategy = cfg.build_strategy()
        ctx = make_context(cfg)  # data and model are validated here, before anything of an old run is removed
        check_rank(cfg, ctx)
        if state is None:
            inputs = input_fingerprint(cfg.to_json())
            if overwrite or again:
                removed = folder.clear()
                if again:
                    log.info("resuming %s in %s: it stopped before its first checkpoint; made again from round 1",
                             cfg.strategy, out)
                elif removed:
                    log.info("--overwrite: removed the earlier run's %s", ", ".join(removed))
            folder.write_start({**cfg.to_json(), **(config_extra or {})}, inputs)
            if ctx.partition_stats:
                write_atomic(out / "partition.json", json.dumps(ctx.partition_stats, indent=1))
        strategy.initialize(ctx.backbone.spec, list(range(cfg.num_devices)))
        transport = make_transport(cfg, ctx)
        start, done = restore(state, strategy, transport) if state is not None else (1, [])
        if state is not None:
            log.info("resuming %s in %s after round %d of %d", cfg.strategy, out, start - 1, cfg.rounds)
        t0 = time.perf_counter()
        records = run_rounds(strategy, transport, ctx, RecordWriter(out, done), start_round=start)
        extra = summary_extra(transport) if summary_extra is not None else {}
        summary = write_outputs(ctx, strategy, records, out, time.perf_counter() - t0, **extra)
        (out / CHECKPOINT).unlink(missing_ok=True)  # a finished run needs no checkpoint
        return summary
