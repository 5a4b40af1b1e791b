"""Importance of attention heads and FFN channels, measured by a device during its LoRA training (FedSpine, issue 23).

LoRAPrune (Zhang et al., 2023) scores a frozen weight by ``|(W + s B A) * G|`` where ``G``, the gradient of the
merged weight, is estimated from the LoRA gradients alone, ``G ~ s (G_B A + B G_A)`` (no gradient of the frozen
``W`` is ever computed), and smooths the score over steps with a moving average. A group's importance is the
sum over its weights: an attention head's rows of query, key and value and its columns of the attention output;
an FFN channel's row of the intermediate projection and its column of the output projection. Only modules that
carry LoRA contribute (the default LoRA targets are all six linear modules of a BERT block).

:class:`GroupImportanceTerm` is the implementation of the local term of kind ``group_importance`` (defined by
the strategy that asks for it): it hooks the LoRA weights' gradients at ``start``, accumulates the smoothed
scores at every backward, and at ``finish`` reports, in the result's metrics under ``group_importance``,
``{"heads": {layer: [score of each head]}, "channels": {layer: [score of each channel]}}`` in the model's
current (possibly pruned) coordinates; it adds nothing to the loss.
"""
from __future__ import annotations

import re

import torch

from ..core.group_selection import GROUP_AXES

METRIC = "group_importance"


def _role(name: str) -> tuple[str, str] | None:
    """(group kind, axis) of a LoRA module by its name, or None (the longest matching module name wins: the
    attention's ``attention.output.dense`` before the block's ``output.dense``)."""
    for module in sorted(GROUP_AXES, key=len, reverse=True):
        if name.endswith(module):
            return GROUP_AXES[module]
    return None


class GroupImportanceTerm:
    methods = ("lora", "pruned-lora")  # peft LoRA modules, on the whole model or a pruned copy
    batched = False  # the batched engine's own LoRA pairs carry no peft modules to hook

    def __init__(self, term) -> None:
        self.smoothing = float(term.smoothing)
        self.handles: list = []
        self.scores: dict[str, torch.Tensor] = {}  # module name -> smoothed per-row or per-column score
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.modules: dict[str, tuple[torch.nn.Module, tuple[str, str], int]] = {}
        self.head_size = 0

    def start(self, model: torch.nn.Module, metrics: dict) -> None:
        for name, module in model.named_modules():
            if name.endswith("attention.self") and hasattr(module, "attention_head_size"):
                self.head_size = int(module.attention_head_size)
            a = getattr(module, "lora_A", None)
            role = _role(name)
            if role is None or not isinstance(a, torch.nn.ModuleDict) or "default" not in a:
                continue
            layer = re.search(r"\.(\d+)\.", name + ".")
            if layer is None:
                continue
            self.modules[name] = (module, role, int(layer.group(1)))
            for part in ("A", "B"):
                weight = getattr(module, f"lora_{part}")["default"].weight
                self.handles.append(weight.register_hook(lambda g, n=name, p=part: self._grad(n, p, g)))

    def _grad(self, name: str, part: str, grad: torch.Tensor) -> None:
        got = self.pending.setdefault(name, {})
        got[part] = grad.detach()
        if len(got) < 2:
            return
        module, (_, axis), _ = self.modules[name]
        a, b = module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach()
        scale = float(module.scaling["default"])
        with torch.no_grad():
            merged = module.base_layer.weight.detach().float() + scale * (b.float() @ a.float())
            grad_merged = scale * (got["B"].float() @ a.float() + b.float() @ got["A"].float())
            score = (merged * grad_merged).abs().sum(dim=1 if axis == "rows" else 0)
        old = self.scores.get(name)
        self.scores[name] = score if old is None else self.smoothing * old + (1 - self.smoothing) * score
        self.pending[name] = {}

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        return torch.zeros(())

    def finish(self, model: torch.nn.Module, metrics: dict) -> None:
        for handle in self.handles:
            handle.remove()
        groups: dict[str, dict[int, torch.Tensor]] = {"heads": {}, "channels": {}}
        for name, score in self.scores.items():
            _, (kind, _), layer = self.modules[name]
            if kind == "heads":  # per dimension -> per head
                score = score.reshape(-1, self.head_size).sum(dim=1)
            total = groups[kind].get(layer)
            groups[kind][layer] = score if total is None else total + score
        metrics[METRIC] = {kind: {str(l): [float(x) for x in s] for l, s in sorted(by_layer.items())}
                           for kind, by_layer in groups.items()}
