"""Full fine-tuning on the shared backbone: load the global weights, train everything, restore.

The shared model keeps the pretrained weights between tasks: after each device (and each evaluation)
the weights come back from ``ModelSpec.base_state``, so other code always sees the frozen base.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.strategy import DeviceResult, DeviceTask, Tensors
from .backbone import Backbone
from .flops import batch_work
from .trainer import TokenizedData, TrainConfig, evaluate_model, local_training


def _live(backbone: Backbone) -> dict[str, torch.nn.Parameter]:
    return {f"full.{n}" if not n.startswith(tuple(backbone.head_names)) else f"head.{n}": p
            for n, p in backbone.model.named_parameters()}


@contextmanager
def full_weights(backbone: Backbone, params: Tensors, trainable: bool) -> Iterator[torch.nn.Module]:
    live = _live(backbone)
    missing = set(live) - set(params)
    if missing:
        raise KeyError(f"full-model task lacks {sorted(missing)[:3]}")
    with torch.no_grad():
        for k, p in live.items():
            p.copy_(params[k])
            p.requires_grad_(trainable)
    try:
        yield backbone.model
    finally:
        with torch.no_grad():
            for k, p in live.items():
                p.requires_grad_(False)
                p.copy_(backbone.spec.base_state[k] if k.startswith("full.") else backbone.spec.head[k])
        backbone.model.eval()


def train_full(backbone: Backbone, task: DeviceTask, data: TokenizedData, indices: list[int], cfg: TrainConfig) -> DeviceResult:
    with full_weights(backbone, task.params, trainable=True) as model:
        result = local_training(model, task, data, indices, cfg,
                                lambda seqs, width: batch_work(backbone.spec, None, seqs, width, full=True))
        result.params = {k: p.detach().to("cpu", copy=True) for k, p in _live(backbone).items()}
        result.metrics["trained_depth"] = backbone.num_layers
    return result


def evaluate_full(backbone: Backbone, task: DeviceTask, data: TokenizedData) -> dict[str, float]:
    with full_weights(backbone, task.params, trainable=False) as model:
        return evaluate_model(model, data)
