"""Bottleneck adapters on the shared backbone through AdapterHub ``adapters`` (for FedAdapter).

A sequential bottleneck adapter (``SeqBnConfig``: down-projection to ``width``, ReLU, up-projection, after each
chosen block's feed-forward output; encoders and AdapterHub's decoders, e.g. Llama and GPT-2) is added to the top
``depth`` blocks, trained with the head, read back and deleted again; the base model is never copied.
``adapters.init`` is applied once to the shared model; with no active adapter its outputs are unchanged
(tests/test_baselines.py).

Canonical keys: ``{layer}.{location}.adapter.{name}``, e.g. ``5.output.adapter.adapter_down.0.weight``.
"""
from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.flops import BatchFlops, batch_work, traversed_layers
from ..core.strategy import DeviceResult, DeviceTask, Tensors
from ..core.training import TrainConfig
from ..engine.trainer import FlopsFn
from ..models.backbone import Backbone, head_parameters
from ..models.keys import BOTTLENECK_ADAPTER as NAME
from ..models.keys import adapter_key_of, adapter_regex, is_head_key
from .base import ClientMethod, register_method


def _pass_the_kv_cache(model: torch.nn.Module) -> int:
    """Give AdapterHub's attention modules the KV cache transformers hands them; returns how many were mended.

    ``adapters`` 1.3.0 replaces a decoder's attention with its own, whose ``forward`` takes ``past_key_value``;
    transformers 4.57 passes ``past_key_values`` (adapter-hub/adapters issue #824, open), which lands in
    ``**kwargs`` unread: the cache is never filled, so every cached step after the first attends to itself only
    (``generate``, and the prompted tasks' one-pass scoring, on a FedAdapter model). Measured on a tiny Llama: the
    cached next-token logits off by 0.10 against a full forward; mended, equal (tests/test_decoders.py)."""
    mended = 0
    for module in model.modules():
        params = inspect.signature(module.forward).parameters
        if "past_key_value" in params and "past_key_values" not in params:
            def forward(*args, _forward=module.forward, past_key_values=None, **kwargs):
                if past_key_values is not None and kwargs.get("past_key_value") is None:
                    kwargs["past_key_value"] = past_key_values
                return _forward(*args, **kwargs)

            module.forward = forward
            mended += 1
    return mended


def _live(backbone: Backbone) -> dict[str, torch.nn.Parameter]:
    regex = adapter_regex(backbone.block_prefix)
    out = {}
    for name, p in backbone.model.named_parameters():
        key = adapter_key_of(regex, name)
        if key is not None:
            out[key] = p
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
        # AdapterHub warns on every decoder step that an inner module has no active adapter; the adapter is
        # active and trained (tests/test_decoders.py checks its tensors move)
        logging.getLogger("adapters").setLevel(logging.ERROR)
        adapters.init(model)
        _pass_the_kv_cache(model)
        model._legendfl_adapters_ready = True
    model.add_adapter(NAME, config=SeqBnConfig(reduction_factor=backbone.spec.hidden_size / width,
                                               leave_out=list(range(L - depth))), overwrite_ok=True)
    model.set_active_adapters(NAME)
    try:
        live = _live(backbone)
        if set(live) != {k for k in params if not is_head_key(k)}:
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


class BottleneckMethod(ClientMethod):
    """Bottleneck adapters of the task's ``adapter`` layout plus the head (FedAdapter)."""

    name = "adapter"
    config_kind = "adapter"  # strategies.fedadapter.AdapterLayout: depth and width

    def inject(self, backbone: Backbone, task: DeviceTask, cfg: TrainConfig, train: bool):
        layout = self.task_config(task)
        return bottleneck_adapter(backbone, layout.depth, layout.width, task.params, train=train)

    def collect(self, backbone: Backbone, model: torch.nn.Module, task: DeviceTask) -> Tensors:
        out = {k: p.detach().to("cpu", copy=True) for k, p in _live(backbone).items()}
        out.update({k: p.detach().to("cpu", copy=True) for k, p in head_parameters(backbone, model).items()})
        return out

    def flops(self, backbone: Backbone, task: DeviceTask) -> FlopsFn:
        layout = self.task_config(task)
        return _adapter_flops(backbone, layout.depth, layout.width)

    def shape(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> tuple[int, int, int]:
        # the adapter sits at its block's output: the backward of the lowest adapted block runs through its
        # adapter only (priced with the trainable modules), the depth - 1 blocks above it in full
        traversed = traversed_layers(num_layers, (), range(num_layers - self.task_config(task).depth, num_layers))
        return traversed, traversed, 0


register_method(BottleneckMethod())
