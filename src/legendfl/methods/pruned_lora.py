"""Client method "pruned-lora": LoRA trained on a copy of the model from which whole heads and FFN channels are gone.

The task's config (kind ``pruned-lora``: ``strategies.structure_mask.PrunedLoraConfig``) names a LoRA layout and
the groups the device keeps (``core.group_selection.GroupSelection``); the task's tensors are already cut to the
kept entries. The device copies the shared frozen model, prunes the copy physically (``models/pruning.py``: the
pruned modules really are smaller), injects the LoRA there and trains it as method "lora" does; it uploads the
LoRA of the kept entries and the importance of its groups (priced as uploaded: :meth:`PrunedLoraMethod.work`).
Its FLOPs are counted on the pruned shapes (:func:`pruned_batch_work`), so both cost models price the pruned
model: attention in proportion to the kept heads, the FFN to the kept channels. A run's global model is exported
pruned, with its LoRA merged, as a model plain transformers loads (``pruned_model/``).

Not batched: the batched engine shares one frozen model among devices, which a pruned copy is not.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.flops import BatchFlops, head_forward_flops, output_forward_flops
from ..core.group_selection import GROUP_AXES, GroupSelection
from ..core.lora_layout import LoraLayout
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec
from ..core.work import DeviceWork
from ..core.training import TrainConfig
from ..engine.group_importance import METRIC as IMPORTANCE_METRIC
from ..engine.trainer import FlopsFn
from ..models.backbone import Backbone
from ..models.pruning import prune_encoder, save_pruned
from .base import ClientMethod, register_method
from .lora import LoraMethod, lora_adapter


def pruned_linear_shapes(spec: ModelSpec, selection: GroupSelection, layer: int) -> dict[str, tuple[int, int]]:
    """(in, out) of every linear module of ``layer`` after pruning to ``selection``."""
    shapes = {}
    for module, (fan_in, fan_out) in spec.linear_modules.items():
        role = GROUP_AXES.get(module)
        kept = None
        if role is not None:
            groups = (selection.keep_heads if role[0] == "heads" else selection.keep_channels).get(layer)
            if groups is not None:
                kept = len(groups) * (selection.head_size if role[0] == "heads" else 1)
        if kept is not None and role[1] == "rows":
            fan_out = kept
        elif kept is not None:
            fan_in = kept
        shapes[module] = (fan_in, fan_out)
    return shapes


def pruned_batch_work(spec: ModelSpec, layout: LoraLayout, selection: GroupSelection, sequences: int,
                      seq_len: int) -> BatchFlops:
    """``core.flops.batch_work`` for LoRA on a pruned model: the same terms, each layer at its pruned shapes
    (attention scores and mixing over the kept heads' dimensions). ``layer_forward``: the mean over layers."""
    tokens = sequences * seq_len
    layers, loras = [], {}
    for layer in range(spec.num_layers):
        shapes = pruned_linear_shapes(spec, selection, layer)
        heads = selection.keep_heads.get(layer)
        attention_dims = len(heads) * selection.head_size if heads is not None else spec.hidden_size
        layers.append(tokens * (2.0 * sum(i * o for i, o in shapes.values()) + 4.0 * seq_len * attention_dims))
        if layer in layout.ranks:
            loras[layer] = tokens * 2.0 * layout.ranks[layer] * sum(i + o for i, o in shapes.values())
    head = head_forward_flops(spec, sequences)
    output = output_forward_flops(spec, tokens)
    trainable = sum(loras.values())
    forward = sum(layers) + trainable + head + output
    shallowest = min(layout.ranks)
    backward = sum(layers[shallowest:]) + 2.0 * trainable + 2.0 * head + output
    return BatchFlops(forward, backward, sum(layers) / spec.num_layers, trainable)


def score_bytes(metrics: dict) -> int:
    """Bytes of the group importance a device reports (float32 per score) in a result's ``metrics``."""
    reported = metrics.get(IMPORTANCE_METRIC) or {}
    return 4 * sum(len(scores) for by_layer in reported.values() for scores in by_layer.values())


class PrunedLoraMethod(LoraMethod):
    name = "pruned-lora"
    config_kind = "pruned-lora"
    export_name = "pruned_model"
    batched = False

    def task_config(self, task: DeviceTask) -> LoraLayout:
        """The LoRA layout (what the LoRA parts of this method read); :meth:`selection` gives the kept groups."""
        return ClientMethod.task_config(self, task).layout

    def selection(self, task: DeviceTask) -> GroupSelection:
        return ClientMethod.task_config(self, task).selection

    @contextmanager
    def inject(self, backbone: Backbone, task: DeviceTask, cfg: TrainConfig, train: bool) -> Iterator[torch.nn.Module]:
        sel = self.selection(task)
        model = prune_encoder(copy.deepcopy(backbone.model), sel.keep_heads, sel.keep_channels)
        pruned = dataclasses.replace(backbone, model=model)
        with lora_adapter(pruned, self.task_config(task), task.params, scaling=cfg.lora_scaling,
                          dropout=cfg.lora_dropout if train else 0.0, train_head=train) as peft_model:
            yield peft_model

    def flops(self, backbone: Backbone, task: DeviceTask) -> FlopsFn:
        layout, sel = self.task_config(task), self.selection(task)
        return lambda seqs, width: pruned_batch_work(backbone.spec, layout, sel, seqs, width)

    def work(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> DeviceWork:
        """As LoRA's, with the importance scores the device reports (one float32 per kept head and channel,
        ``engine.group_importance``) added to what it uploads: they travel with its LoRA."""
        work = super().work(task, result, num_layers)
        return dataclasses.replace(work, upload_bytes=work.upload_bytes + score_bytes(result.metrics))

    def export(self, task: DeviceTask, backbone: Backbone, out_dir: str, cfg: TrainConfig) -> bool:
        """The pruned model with its LoRA merged and its head, as a plain transformers model (``save_pruned``)."""
        with self.inject(backbone, task, cfg, train=False) as peft_model:
            merged = copy.deepcopy(peft_model).merge_and_unload()
        save_pruned(merged, out_dir, backbone.tokenizer)
        return True


register_method(PrunedLoraMethod())
