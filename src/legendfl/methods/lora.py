"""LoRA as a client method: per-layer LoRA on the shared backbone through peft, plus the head.

The method trains the layout's LoRA pairs and the classification head, uploads both and exports a peft
adapter (:class:`LoraMethod`, at the end of this file).

A :class:`~legendfl.core.lora_layout.LoraLayout` becomes a ``peft.LoraConfig`` with
``layers_to_transform`` (the chosen layers), ``rank_pattern`` (each layer's rank) and ``alpha_pattern``.

Scaling, decided deliberately: peft scales a LoRA pair by ``lora_alpha / r``. We set every layer's alpha to
``lora_scaling * r`` (``alpha_pattern``), so the scaling is the same constant for every layer and every rank.
Layers of different ranks (LEGEND's rank distribution, HetLoRA's truncated ranks) then produce updates of
comparable magnitude, and truncating or zero-padding a pair does not change its scale. The default
``lora_scaling = 2`` equals the common ``alpha = 16, r = 8``.

LoRA goes on all linear modules of each chosen block, as the paper does. The head is not a LoRA module:
it is trained by every device and handled by the trainer.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ..core.flops import batch_work
from ..core.lora_layout import LoraLayout
from ..core.strategy import DeviceResult, DeviceTask, Tensors
from ..core.training import TrainConfig
from ..engine.trainer import FlopsFn
from ..models.backbone import Backbone, head_parameters
from ..models.keys import PEFT_ADAPTER as ADAPTER
from ..models.keys import is_head_key, lora_key_of, lora_regex
from .base import ClientMethod, register_method


def lora_config(backbone: Backbone, layout: LoraLayout, *, scaling: float = 2.0, dropout: float = 0.0,
                modules_to_save: list[str] | None = None) -> LoraConfig:
    if layout.num_layers != backbone.num_layers:
        raise ValueError(f"layout has {layout.num_layers} layers, model has {backbone.num_layers}")
    pattern = re.escape(backbone.layers_pattern)
    rank_pattern = {rf"{pattern}\.{l}\..*": r for l, r in layout.ranks.items()}
    alpha_pattern = {rf"{pattern}\.{l}\..*": scaling * r for l, r in layout.ranks.items()}
    top_rank = max(layout.ranks.values())
    return LoraConfig(
        r=top_rank, lora_alpha=scaling * top_rank, lora_dropout=dropout, bias="none",
        target_modules=sorted(backbone.linear_modules), layers_to_transform=layout.layers,
        layers_pattern=backbone.layers_pattern, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        modules_to_save=modules_to_save, fan_in_fan_out=backbone.fan_in_fan_out,
    )


def get_lora_tensors(backbone: Backbone, peft_model: torch.nn.Module) -> Tensors:
    """Canonical ``{layer}.{module}.lora_{A,B}`` -> tensor copies, for every LoRA pair in the model."""
    regex = lora_regex(backbone.block_prefix)
    out: Tensors = {}
    for name, param in peft_model.named_parameters():
        key = lora_key_of(regex, name)
        if key is not None:
            out[key] = param.detach().to("cpu", copy=True)
    return out


def set_lora_tensors(backbone: Backbone, peft_model: torch.nn.Module, tensors: Tensors) -> None:
    """Copy canonical tensors into the model's LoRA parameters; every pair in the model must be given."""
    regex = lora_regex(backbone.block_prefix)
    seen = set()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            key = lora_key_of(regex, name)
            if key is None:
                continue
            if key not in tensors:
                raise KeyError(f"no tensor given for LoRA parameter {key}")
            value = tensors[key]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{key}: shape {tuple(value.shape)} does not match the layer's {tuple(param.shape)}")
            param.copy_(value)
            seen.add(key)
    extra = {k for k in tensors if k[0].isdigit()} - seen
    if extra:
        raise KeyError(f"tensors for layers without LoRA in this model: {sorted(extra)[:4]}")


@contextmanager
def lora_adapter(backbone: Backbone, layout: LoraLayout, params: Tensors, *, scaling: float = 2.0,
                 dropout: float = 0.0, train_head: bool = True) -> Iterator[PeftModel]:
    """Inject ``layout``'s LoRA into the shared backbone, load ``params``, yield, then remove it again.

    The base model is never copied: peft wraps it in place and ``unload()`` restores the original modules.
    """
    peft_model = get_peft_model(backbone.model, lora_config(backbone, layout, scaling=scaling, dropout=dropout))
    try:
        set_lora_tensors(backbone, peft_model, {k: v for k, v in params.items() if not is_head_key(k)})
        head = head_parameters(backbone, peft_model)
        with torch.no_grad():
            for key, p in head.items():
                if key in params:
                    p.copy_(params[key])
                p.requires_grad_(train_head)
        yield peft_model
    finally:
        backbone.restore_head(peft_model)
        peft_model.unload()
        backbone.model.eval()


def export_adapter(backbone: Backbone, layout: LoraLayout, params: Tensors, out_dir: str, *,
                   scaling: float = 2.0) -> None:
    """Save the global LoRA (and head, as ``modules_to_save``) in peft format.

    ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base), out_dir)`` (or
    ``AutoModelForCausalLM`` for a decoder) then reproduces the global model. The adapter names its base as peft
    does, by the model's own folder: a packaged model's directory, or for a GGUF the converted model's cache folder
    (a directory ``from_pretrained`` loads as it is; the GGUF package's folder would need ``gguf_file``).
    """
    head_modules = sorted({n.rsplit(".", 1)[0].split(".")[0] for n in backbone.head_names})
    cfg = lora_config(backbone, layout, scaling=scaling, modules_to_save=head_modules or None)
    cfg.task_type = "CAUSAL_LM" if backbone.task_type == "causal_lm" else "SEQ_CLS"
    peft_model = get_peft_model(backbone.model, cfg)
    try:
        set_lora_tensors(backbone, peft_model, {k: v for k, v in params.items() if not is_head_key(k)})
        live = dict(peft_model.named_parameters())
        with torch.no_grad():
            for n in backbone.head_names:
                top, rest = n.split(".", 1)
                key = f"base_model.model.{top}.modules_to_save.{ADAPTER}.{rest}"
                live[key].copy_(params[f"head.{n}"])
        peft_model.save_pretrained(out_dir)
    finally:
        peft_model.unload()
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        backbone.model.eval()


class LoraMethod(ClientMethod):
    name = "lora"
    batched = True  # the batched engine trains its tasks (engine/batched_training.py)
    config_kind = LoraLayout.kind

    @contextmanager
    def inject(self, backbone: Backbone, task: DeviceTask, cfg: TrainConfig, train: bool) -> Iterator[torch.nn.Module]:
        with lora_adapter(backbone, self.task_config(task), task.params, scaling=cfg.lora_scaling,
                          dropout=cfg.lora_dropout if train else 0.0, train_head=train) as model:
            yield model

    def collect(self, backbone: Backbone, model: torch.nn.Module, task: DeviceTask) -> Tensors:
        out = get_lora_tensors(backbone, model)
        out.update({k: p.detach().to("cpu", copy=True) for k, p in head_parameters(backbone, model).items()})
        return out

    def flops(self, backbone: Backbone, task: DeviceTask) -> FlopsFn:
        return lambda seqs, width: batch_work(backbone.spec, self.task_config(task), seqs, width)

    def shape(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> tuple[int, int, int]:
        layout = self.task_config(task)
        return layout.depth, len(layout.ranks), layout.rank_sum

    def export(self, task: DeviceTask, backbone: Backbone, out_dir: str, cfg: TrainConfig) -> bool:
        export_adapter(backbone, self.task_config(task), task.params, out_dir, scaling=cfg.lora_scaling)
        return True


def train_lora(backbone: Backbone, task: DeviceTask, data, indices: list[int], cfg: TrainConfig) -> DeviceResult:
    """Train ``task`` (a LoRA task, with its local terms) on ``indices`` of ``data``."""
    return LoraMethod().train(task, backbone, data, indices, cfg)


register_method(LoraMethod())
