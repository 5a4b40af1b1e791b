"""LoRA as a client method: peft LoRA of the task's layout (``models.lora``) plus the head.

Trains the layout's LoRA pairs and the classification head; uploads both; exports a peft adapter.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.strategy import DeviceResult, DeviceTask, Tensors
from ..core.training import TrainConfig
from .backbone import Backbone, head_parameters
from ..core.flops import batch_work
from .lora import export_adapter, get_lora_tensors, lora_adapter
from .methods import ClientMethod
from .trainer import FlopsFn


class LoraMethod(ClientMethod):
    name = "lora"

    @contextmanager
    def inject(self, backbone: Backbone, task: DeviceTask, cfg: TrainConfig, train: bool) -> Iterator[torch.nn.Module]:
        if task.layout is None:
            raise ValueError("a LoRA task needs a layout")
        with lora_adapter(backbone, task.layout, task.params, scaling=cfg.lora_scaling,
                          dropout=cfg.lora_dropout if train else 0.0, train_head=train) as model:
            yield model

    def collect(self, backbone: Backbone, model: torch.nn.Module, task: DeviceTask) -> Tensors:
        out = get_lora_tensors(backbone, model)
        out.update({k: p.detach().to("cpu", copy=True) for k, p in head_parameters(backbone, model).items()})
        return out

    def flops(self, backbone: Backbone, task: DeviceTask) -> FlopsFn:
        return lambda seqs, width: batch_work(backbone.spec, task.layout, seqs, width)

    def shape(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> tuple[int, int, int]:
        return task.layout.depth, len(task.layout.ranks), task.layout.rank_sum

    def export(self, task: DeviceTask, backbone: Backbone, out_dir: str, cfg: TrainConfig) -> bool:
        export_adapter(backbone, task.layout, task.params, out_dir, scaling=cfg.lora_scaling)
        return True


def train_lora(backbone: Backbone, task: DeviceTask, data, indices: list[int], cfg: TrainConfig) -> DeviceResult:
    """Train ``task`` (a LoRA task, with its local terms) on ``indices`` of ``data``."""
    return LoraMethod().train(task, backbone, data, indices, cfg)
