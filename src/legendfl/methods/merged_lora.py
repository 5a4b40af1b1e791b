"""Client method "merged-lora": LoRA (as method "lora") on frozen weights that carry the task's ``base_delta``.

FLoRA merges each round's stacked LoRA into the frozen weights and FedEx-LoRA its aggregation residual
(``core/base_delta.py``). The device adds the change (what it holds plus what it received, times
``lora_scaling``) to each linear module's weight, trains LoRA on top exactly as method "lora" does, and puts the
saved weights back afterwards, so the shared frozen model is unchanged for the next device (a test checks it bit
for bit). It uploads the LoRA and the head, as method "lora" does; the change is not sent back.

Export: the global model with the change and the LoRA merged into its weights, saved where plain transformers
loads it (``merged_model/``: ``AutoModelForSequenceClassification.from_pretrained``, or ``AutoModelForCausalLM``
for a decoder), with its tokenizer. Not batched: the batched engine shares one frozen model among the devices of
a pass, and each device's change may differ (one that missed rounds holds an older one).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.base_delta import MERGED_LORA
from ..core.files import staged_directory
from ..core.strategy import DeviceTask
from ..core.training import TrainConfig
from ..models.backbone import Backbone
from .base import register_method
from .lora import LoraMethod


@contextmanager
def changed_weights(backbone: Backbone, task: DeviceTask, scaling: float) -> Iterator[None]:
    """The backbone's linear weights plus ``scaling`` x the task's change (kept in LoRA's units, ``B A``, so that
    it is scaled as the LoRA it came from), for the duration of the block; restored exactly afterwards."""
    change = task.base_delta.dense() if task.base_delta is not None else {}
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (the weight, its values before the change)
    try:
        with torch.no_grad():
            for stem, delta in sorted(change.items()):
                layer, _, module = stem.partition(".")
                if not layer.isdigit() or module not in backbone.linear_modules:
                    raise ValueError(f"base_delta: {stem!r} is not a linear module of the model's blocks")
                weight = backbone.model.get_submodule(f"{backbone.block_prefix}.{layer}.{module}").weight
                if tuple(delta.shape) != tuple(weight.shape):
                    raise ValueError(f"base_delta: {stem} has shape {tuple(delta.shape)}, the weight {tuple(weight.shape)}")
                saved.append((weight, weight.detach().clone()))
                weight.add_((scaling * delta).to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


class MergedLoraMethod(LoraMethod):
    name = MERGED_LORA
    batched = False
    export_name = "merged_model"

    @contextmanager
    def inject(self, backbone: Backbone, task: DeviceTask, cfg: TrainConfig, train: bool) -> Iterator[torch.nn.Module]:
        with changed_weights(backbone, task, cfg.lora_scaling), super().inject(backbone, task, cfg, train) as model:
            yield model

    def export(self, task: DeviceTask, backbone: Backbone, out_dir: str, cfg: TrainConfig) -> bool:
        with self.inject(backbone, task, cfg, train=False) as peft_model:
            merged = copy.deepcopy(peft_model).merge_and_unload()
        with staged_directory(out_dir) as staging:
            merged.save_pretrained(staging)
            backbone.tokenizer.save_pretrained(staging)
        return True


register_method(MergedLoraMethod())
