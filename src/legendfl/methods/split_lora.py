"""Split LoRA as a client method: a device trains the LoRA of the model's bottom with the server, which trains
the top's LoRA and the head (split federated learning, ``core.split``; MergeSFL's devices).

Its tasks never train alone: the runtime hands a round's device tasks and the server's task to
:meth:`SplitLoraMethod.train_joint` (``engine.split_training``). The backbone carries LoRA on every block at
the plan's rank, the server's tensors in place; each device's bottom tensors stay its own.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.flops import batch_work
from ..core.lora_layout import LoraLayout
from ..core.split import OPTIMIZER, SplitPlan
from ..core.strategy import DeviceResult, DeviceTask, Tensors
from ..core.training import TrainConfig
from ..engine.split_training import train_split_round
from ..engine.trainer import FlopsFn
from ..models.backbone import Backbone
from ..models.tokenized import TokenizedData
from .base import ClientMethod, register_method
from .lora import lora_adapter


def _layout(plan: SplitPlan) -> LoraLayout:
    return LoraLayout.all_layers(plan.rank, plan.num_layers)


class SplitLoraMethod(ClientMethod):
    name = "split-lora"
    joint = True
    config_kind = SplitPlan.kind

    @contextmanager
    def inject(self, backbone: Backbone, task: DeviceTask, cfg: TrainConfig, train: bool) -> Iterator[torch.nn.Module]:
        """The backbone with LoRA on every block, holding the task's tensors (the server's: its top and head; the
        bottom's live tensors are placeholders that each device's own replace)."""
        params = {k: v for k, v in task.params.items() if not k.startswith(OPTIMIZER)}
        with lora_adapter(backbone, _layout(self.task_config(task)), params, scaling=cfg.lora_scaling,
                          dropout=cfg.lora_dropout if train else 0.0, train_head=train) as model:
            yield model

    def train(self, task: DeviceTask, backbone: Backbone, data, indices: list[int], cfg: TrainConfig) -> DeviceResult:
        raise ValueError("a 'split-lora' task trains with the server in a split round (train_joint), never alone")

    def train_joint(self, server: DeviceTask, tasks: list[DeviceTask], backbone: Backbone, data: TokenizedData,
                    partitions: dict[int, list[int]], cfg: TrainConfig) -> dict[int, DeviceResult]:
        plan = self.task_config(server)
        if plan.role != "server":
            raise ValueError(f"a split round's server task needs role 'server', got {plan.role!r}")
        for task in tasks:
            if self.task_config(task).split_layer != plan.split_layer:
                raise ValueError(f"device {task.device_id}: split_layer {task.config.split_layer} differs from the "
                                 f"server's {plan.split_layer}")
        placeholders = tasks[0].params if tasks else {}
        server_task = DeviceTask(server.device_id, server.round, {**placeholders, **server.params}, plan, self.name, server.lr)
        with self.inject(backbone, server_task, cfg, train=True) as model:
            return train_split_round(backbone, model, server, tasks, data, partitions, cfg)

    def collect(self, backbone: Backbone, model: torch.nn.Module, task: DeviceTask) -> Tensors:
        raise ValueError("a split round's tensors are collected by the split engine (engine.split_training)")

    def flops(self, backbone: Backbone, task: DeviceTask) -> FlopsFn:
        return lambda seqs, width: batch_work(backbone.spec, _layout(self.task_config(task)), seqs, width)

    def shape(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> tuple[int, int, int]:
        plan = self.task_config(task)
        return plan.split_layer, plan.split_layer, plan.split_layer * plan.rank


register_method(SplitLoraMethod())
