"""One-shot structured pruning of a finished run's model, for comparisons at equal sparsity (issue 23).

FedSpine prunes while it tunes; every other LoRA strategy trains a dense model. To compare them at the same
sparsity, the dense model is pruned once, after training, by FedSpine's own rule:

1. every device scores its attention heads and FFN channels on its own data with the local term FedSpine's
   devices run (LoRAPrune's ``|(W + s B A) * G|`` from the LoRA gradients, smoothed over batches with the same
   moving average: ``engine/group_importance.py``), a forward and a backward pass per batch and no update;
2. the server keeps, per layer, the ``ceil((1 - s) n)`` groups of highest mean importance, weighted by the
   examples each device scored (``strategies.structure_mask.mean_importance`` and ``keep_top``, at least one head);
3. the run's LoRA is merged, the model pruned physically (``models/pruning.py``) and saved as a model plain
   transformers loads, and evaluated on the run's dev examples with plain transformers alone.

Several sparsities share one scoring. Calibration data: each device's first ``examples_per_device`` examples in
the order of its batches in a "round 0" (drawn from (seed, "batches", 0, device); rounds count from 1, so no
training round drew it), in batches of the run's batch size; nothing but the scores leaves a device, as in
FedSpine. At sparsity 0 nothing is pruned: the output is the run's dense model with its LoRA merged (its accuracy
is the run's own).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..core.files import write_atomic
from ..core.seeding import rng
from ..core.strategy import key_layer
from ..data.run_data import load_run_task, run_partitions
from ..engine.group_importance import METRIC, GroupImportanceTerm
from ..methods.lora import get_lora_tensors
from ..models.pruning import encoder_blocks, prune_encoder, save_pruned, structure
from ..runtime.context import RunContext
from ..strategies.structure_mask import GroupImportance, keep_top, mean_importance
from .evaluate_export import evaluate_exported
from .retiming import run_config_values

REPORT = "pruning.json"


def _check(sparsity: float, examples_per_device: int) -> None:
    if isinstance(sparsity, bool) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity}")
    if examples_per_device < 1:
        raise ValueError(f"--examples-per-device must be a positive integer, got {examples_per_device}")


def device_importance(model: torch.nn.Module, data, indices: list[int], batch_size: int, smoothing: float
                      ) -> dict[str, dict[str, list[float]]]:
    """One device's group importance on ``indices`` of ``data`` (the metric FedSpine's devices report)."""
    term = GroupImportanceTerm(GroupImportance(smoothing))
    term.start(model, {})
    for i in range(0, len(indices), batch_size):
        model.zero_grad(set_to_none=True)
        model(**data.batch(indices[i:i + batch_size])).loss.backward()
    metrics: dict[str, Any] = {}
    term.finish(model, metrics)
    model.zero_grad(set_to_none=True)
    return metrics[METRIC]


def folder_name(sparsity: float) -> str:
    """The folder :func:`prune_run` writes a sparsity's model to: ``pruned-s30`` for 0.3."""
    return f"pruned-s{round(100 * float(sparsity), 1):g}"


def prune_run(run_dir: str | Path, sparsities: list[float], out: str | Path, examples_per_device: int = 64,
              smoothing: float = 0.9) -> list[dict[str, Any]]:
    """Prune the model of the finished run in ``run_dir`` to each of ``sparsities`` (the groups are scored once)
    into ``out/pruned-s<percent>``; returns the reports (also ``pruning.json`` in each folder): kept groups,
    importance, accuracy on the run's dev examples, parameters, bytes."""
    from peft import PeftModel

    if not sparsities:
        raise ValueError("--sparsity needs at least one value in [0, 1)")
    for sparsity in sparsities:
        _check(sparsity, examples_per_device)
    run_dir, out = Path(run_dir), Path(out)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file() or not (adapter / "labels.json").is_file():
        raise ValueError(f"{run_dir} holds no exported LoRA adapter (adapter/adapter_config.json): one-shot pruning "
                         f"scores groups by their LoRA gradients, so it prunes the models of LoRA strategies' runs")
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out must be a folder of its own, not the run's ({out})")
    cfg = RunConfig.from_sources(run_config_values(run_dir), {"out_dir": str(out)})
    task = load_run_task(cfg)
    chosen = [[int(i) for i in rng(cfg.train.seed, "batches", 0, device).permutation(indices)[:examples_per_device]]
              for device, indices in enumerate(run_partitions(cfg, task))]
    ctx = RunContext.for_client(cfg, [task.train[i] for part in chosen for i in part], task.label_names)
    encoder_blocks(ctx.backbone.model)  # a model family that cannot be pruned is refused before any scoring
    model = PeftModel.from_pretrained(ctx.backbone.model, str(adapter), is_trainable=True).eval()
    scored = {key_layer(k) for k in get_lora_tensors(ctx.backbone, model)}
    bare = sorted(set(range(ctx.backbone.num_layers)) - scored)
    if bare:
        raise ValueError(f"the run's adapter has no LoRA on layers {bare}: their groups cannot be scored")
    reports: dict[str, list] = {"heads": [], "channels": []}
    start = 0
    for part in chosen:  # each device scores its own examples (positions in ctx.train, in the order chosen)
        scores = device_importance(model, ctx.train, list(range(start, start + len(part))), cfg.train.batch_size, smoothing)
        start += len(part)
        for kind in reports:
            reports[kind].append((float(len(part)), {int(l): torch.tensor(v) for l, v in scores[kind].items()}))
    spec = ctx.backbone.spec
    groups = {"heads": spec.attention_heads, "channels": spec.linear_modules["intermediate.dense"][1]}
    means = {kind: mean_importance(reports[kind], {l: groups[kind] for l in range(spec.num_layers)}) for kind in groups}
    merged = model.merge_and_unload()  # in place: nothing reads the unmerged model after the scoring
    dense_params = sum(p.numel() for p in merged.parameters())
    results = []
    for sparsity in sparsities:
        kept = {kind: keep_top(means[kind], sparsity) for kind in groups}
        pruned = prune_encoder(copy.deepcopy(merged), kept["heads"], kept["channels"])
        folder = out / folder_name(sparsity)
        save_pruned(pruned, folder, ctx.backbone.tokenizer)
        write_atomic(folder / "labels.json", (adapter / "labels.json").read_text())
        accuracy = evaluate_exported(str(folder), cfg.task, max_length=cfg.max_length,
                                     max_dev_examples=cfg.max_dev_examples)
        report = {"source": str(run_dir), "sparsity": sparsity, "examples_per_device": examples_per_device,
                  "smoothing": smoothing, "accuracy": accuracy, "dense_parameters": dense_params,
                  "parameters": sum(p.numel() for p in pruned.parameters()),
                  "model_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
                  "structure": {str(l): list(s) for l, s in structure(pruned).items()},
                  "kept": {kind: {str(l): v for l, v in k.items()} for kind, k in kept.items()},
                  "importance": {kind: {str(l): m.tolist() for l, m in by_layer.items()} for kind, by_layer in means.items()}}
        write_atomic(folder / REPORT, json.dumps(report, indent=1))
        results.append(report)
    return results
