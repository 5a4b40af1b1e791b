"""Bottleneck adapters on the shared backbone through AdapterHub ``adapters`` (for FedAdapter).

A sequential bottleneck adapter (``SeqBnConfig``: down-projection to ``width``, ReLU, up-projection,
after each chosen block's feed-forward output) is added to the top ``depth`` blocks, trained with the head,
read back and deleted again; the base model is never copied. ``adapters.init`` is applied once to the
shared model; with no active adapter its outputs are unchanged (tested).

Canonical keys: ``{layer}.{location}.adapter.{name}``, e.g. ``5.output.adapter.adapter_down.0.weight``.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.strategy import DeviceResult, DeviceTask, Tensors
from .backbone import Backbone
from .flops import BatchFlops, batch_work
from .lora import head_parameters
from .trainer import TokenizedData, TrainConfig, evaluate_model, local_training

NAME = "fedadapter"


def _regex(backbone: Backbone) -> re.Pattern:
    return re.compile(rf"(?:^|\.){re.escape(backbone.block_prefix)}\.(\d+)\.(.+)\.adapters\.{NAME}\.(.+)$")


def _live(backbone: Backbone) -> dict[str, torch.nn.Parameter]:
    regex = _regex(backbone)
    out = {}
    for name, p in backbone.model.named_parameters():
        m = regex.search(name)
        if m:
            out[f"{m.group(1)}.{m.group(2)}.adapter.{m.group(3)}"] = p
    return out


@contextmanager
def bottleneck_adapter(backbone: Backbone, depth: int, width: int, params: Tensors, train: bool) -> Iterator[torch.nn.Module]:
    import adapters
    from adapters import SeqBnConfig

    model = backbone.model
    L = backbone.num_layers
    if not 1 <= depth <= L:
        raise ValueError(f"adapter depth must be in [1, {L}], got {depth}")
    if not getattr(model, "_legendfl_adapters_ready", False):
        adapters.init(model)
        model._legendfl_adapters_ready = True
    model.add_adapter(NAME, config=SeqBnConfig(reduction_factor=backbone.spec.hidden_size / width,
                                               leave_out=list(range(L - depth))), overwrite_ok=True)
    model.set_active_adapters(NAME)
    try:
        live = _live(backbone)
        if set(live) != {k for k in params if not k.startswith("head.")}:
            raise KeyError(f"adapter tensors do not match depth {depth}: expected {sorted(live)[:3]}...")
        head = head_parameters(backbone, model)
        with torch.no_grad():
            for k, p in {**live, **head}.items():
                if tuple(p.shape) != tuple(params[k].shape):
                    raise ValueError(f"{k}: shape {tuple(params[k].shape)} does not match {tuple(p.shape)}")
                p.copy_(params[k])
                p.requires_grad_(train)
        yield model
    finally:
        for p in model.parameters():
            p.requires_grad_(False)
        backbone.restore_head()
        model.delete_adapter(NAME)
        model.set_active_adapters(None)
        model.eval()


def _adapter_flops(backbone: Backbone, depth: int, width: int):
    spec = backbone.spec
    L = spec.num_layers

    def flops(seqs: int, seq_len: int) -> BatchFlops:
        per_layer = 2.0 * seqs * seq_len * 2 * spec.hidden_size * width
        return batch_work(spec, None, seqs, seq_len, extra_forward_per_layer={l: per_layer for l in range(L - depth, L)})

    return flops


def train_adapter(backbone: Backbone, task: DeviceTask, data: TokenizedData, indices: list[int], cfg: TrainConfig) -> DeviceResult:
    depth, width = task.settings["adapter_depth"], task.settings["adapter_width"]
    with bottleneck_adapter(backbone, depth, width, task.params, train=True) as model:
        result = local_training(model, task, data, indices, cfg, _adapter_flops(backbone, depth, width))
        result.params = {k: p.detach().to("cpu", copy=True) for k, p in _live(backbone).items()}
        result.params.update({k: p.detach().to("cpu", copy=True) for k, p in head_parameters(backbone, model).items()})
        result.metrics["trained_depth"] = depth
    return result


def evaluate_adapter(backbone: Backbone, task: DeviceTask, data: TokenizedData) -> dict[str, float]:
    with bottleneck_adapter(backbone, task.settings["adapter_depth"], task.settings["adapter_width"], task.params, train=False) as model:
        return evaluate_model(model, data)
