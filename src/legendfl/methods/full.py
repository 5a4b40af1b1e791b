"""Full fine-tuning on the shared backbone: load the global weights, train everything, restore.

The shared model keeps the pretrained weights between tasks: after each device (and each evaluation)
the weights come back from ``ModelSpec.base_state``, so other code always sees the frozen base.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.flops import batch_work
from ..core.strategy import DeviceResult, DeviceTask, Tensors
from ..core.training import TrainConfig
from ..engine.trainer import FlopsFn
from ..models.backbone import Backbone
from ..models.keys import full_key, head_key
from .base import ClientMethod, register_method


def _live(backbone: Backbone) -> dict[str, torch.nn.Parameter]:
    return {full_key(n) if not n.startswith(tuple(backbone.head_names)) else head_key(n): p
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


class FullMethod(ClientMethod):
    """Every weight of the backbone and the head trained and uploaded (full fine-tuning)."""

    name = "full"
    full = True

    def inject(self, backbone: Backbone, task: DeviceTask, cfg: TrainConfig, train: bool):
        return full_weights(backbone, task.params, trainable=train)

    def collect(self, backbone: Backbone, model: torch.nn.Module, task: DeviceTask) -> Tensors:
        return {k: p.detach().to("cpu", copy=True) for k, p in _live(backbone).items()}

    def flops(self, backbone: Backbone, task: DeviceTask) -> FlopsFn:
        return lambda seqs, width: batch_work(backbone.spec, None, seqs, width, full=True)

    def shape(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> tuple[int, int, int]:
        return num_layers, num_layers, 0


register_method(FullMethod())
