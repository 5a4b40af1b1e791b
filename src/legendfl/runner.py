"""One run from a :class:`RunConfig`: data, model, partition, fleet, strategy, simulation, outputs."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from .config import RunConfig
from .data.partition import partition_stats
from .data.run_data import load_run_task, run_partitions, server_validation
from .fleet.devices import load_fleet
from .metrics.summary import summarize
from .models.backbone import load_backbone
from .models.trainer import TokenizedData, TrainConfig
from .runtime.inprocess import SimulationSetup, run_simulation
from .strategies import build_strategy


def prepare(cfg: RunConfig, progress: Callable[[str], None] = print) -> SimulationSetup:
    """Everything a runtime needs, built from the configuration (validating inputs before any training)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = load_run_task(cfg)
    parts = run_partitions(cfg, task)
    fleet = load_fleet(cfg.fleet, cfg.num_devices, cfg.seed)
    backbone = load_backbone(cfg.model, task.num_labels, cfg.seed, cfg.device)
    if cfg.initial_depth is not None and cfg.initial_depth > backbone.num_layers:
        raise ValueError(f"initial_depth must be in [1, {backbone.num_layers}], got {cfg.initial_depth}")
    t0 = time.perf_counter()
    used = sorted({i for p in parts for i in p})
    if len(used) < len(task.train):  # tokenise only the examples some device holds
        position = {i: n for n, i in enumerate(used)}
        train_examples = [task.train[i] for i in used]
        parts = [[position[i] for i in p] for p in parts]
    else:
        train_examples = task.train
    train = TokenizedData(backbone.tokenizer, train_examples, cfg.max_length)
    dev = TokenizedData(backbone.tokenizer, task.dev[: cfg.max_dev_examples], cfg.max_length)
    held = server_validation(cfg, task)
    validation = TokenizedData(backbone.tokenizer, [task.train[i] for i in held], cfg.max_length) if held else None
    progress(f"task {task.name}: {len(task.train)} train / {len(task.dev)} dev examples, labels {task.label_names}; "
             f"tokenised in {time.perf_counter() - t0:.1f}s")
    progress(f"model {cfg.model}: {backbone.num_layers} layers, LoRA targets {sorted(backbone.linear_modules)}, "
             f"head {backbone.head_names}")
    return SimulationSetup(backbone, train, dev, parts, fleet, TrainConfig.from_run(cfg), cfg.rounds, cfg.eval_every, cfg.report_noise, cfg.seed, cfg.cost_model,
                           label_names=task.label_names, validation=validation,
                           partition_stats=partition_stats(parts, [ex[2] for ex in train_examples], task.num_labels))


def run(cfg: RunConfig, progress: Callable[[str], None] = print) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup = prepare(cfg, progress)
    strategy = build_strategy(cfg)
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
    (out / "partition.json").write_text(json.dumps(setup.partition_stats, indent=1))
    sizes = [s["examples"] for s in setup.partition_stats]
    progress(f"partition {cfg.partition} (alpha {cfg.dirichlet_alpha}) over {cfg.num_devices} devices: sizes "
             f"min {min(sizes)} / max {max(sizes)}; per device: " +
             ", ".join(f"{s['device']}:{s['examples']}{s['label_counts']}" for s in setup.partition_stats[:12]) +
             (" ..." if len(sizes) > 12 else ""))
    progress(f"fleet {setup.fleet.name}: " + ", ".join(sorted({d.kind for d in setup.fleet.devices})[:6]))
    t0 = time.perf_counter()
    records = run_simulation(strategy, setup, out, progress)
    return write_outputs(cfg, strategy, setup.backbone, records, out, setup.label_names, time.perf_counter() - t0)


def write_outputs(cfg: RunConfig, strategy, backbone, records: list[dict], out: Path, label_names: list[str],
                  wall_time_s: float, **extra) -> dict:
    """What every runtime leaves after a run: ``summary.json``, the exported adapter, the figures."""
    summary = {**summarize(records, cfg.target_accuracy), **strategy.summary(), "task": cfg.task, "model": cfg.model, "cost_model": cfg.cost_model,
               "fleet": cfg.fleet, "num_devices": cfg.num_devices, "wall_time_s": wall_time_s, **extra}
    task = strategy.evaluation_task()
    if task.kind == "lora":
        from .models.lora import export_adapter

        export_adapter(backbone, task.layout, task.params, str(out / "adapter"), scaling=cfg.lora_scaling)
        (out / "adapter" / "labels.json").write_text(json.dumps(label_names))
    try:
        from .metrics.plots import run_plots

        summary["plots"] = run_plots(records, out)
    except ImportError:  # pragma: no cover - matplotlib missing
        summary["plots"] = []
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
