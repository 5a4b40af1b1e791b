"""The server side of prune-and-tune (FedSpine, issue 23): the sparsity schedule, the next structure mask from the
devices' importance scores, and element-wise aggregation of updates that cover different entries.

* :func:`scheduled_sparsity`: the cubic ramp of gradual pruning (Zhu and Gupta, 2017, "To prune, or not to
  prune"), ``s_t = s* (1 - (1 - t / T)^3)`` over the first ``T`` rounds, then ``s*``: pruning is fast while the
  model has redundant groups and slows down as it approaches the target.
* :func:`next_mask`: per layer, the ``ceil((1 - s) n)`` groups (heads or FFN channels) with the highest
  sample-weighted mean importance over the devices that reported them, at least ``minimum`` (one head per layer:
  a layer without heads would pass its input through attention unchanged, which no checkpoint was trained for).
  Ties go to the lower index. Groups no device reported keep their rank from the previous scores, here: zero.
* :class:`PrunedLoraConfig`: a device's task (its LoRA layout and the groups it keeps).
* :class:`GroupImportance`: the local term that asks a device for its groups' importance.
* :func:`elementwise_average`: each entry averaged over the devices whose mask covers it (weights ``w_i``:
  ``sum_i w_i m_i x_i / sum_i w_i m_i``); an entry no device covered keeps its previous value. LEGEND's
  layer-wise aggregation is its special case with whole-layer masks.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from dataclasses import dataclass
from typing import ClassVar

from ..core.group_selection import GroupSelection
from ..core.hooks import LocalTerm, register_term
from ..core.lora_layout import LoraLayout
from ..core.strategy import Tensors
from ..core.task_config import TaskConfig, register_task_config


@register_task_config
@dataclass(frozen=True)
class PrunedLoraConfig(TaskConfig):
    """The task config of client method "pruned-lora": prune the device's copy of the model to ``selection``
    (``models/pruning.py``), then train LoRA of ``layout`` on it (the task's tensors are already cut to the
    kept entries: ``GroupSelection.restrict``)."""

    kind: ClassVar[str] = "pruned-lora"
    layout: LoraLayout
    selection: GroupSelection

    def fields_json(self) -> dict:
        sel = self.selection
        return {"layout": self.layout.fields_json(), "head_size": sel.head_size,
                "keep_heads": {str(l): list(k) for l, k in sel.keep_heads.items()},
                "keep_channels": {str(l): list(k) for l, k in sel.keep_channels.items()}}

    @classmethod
    def from_fields(cls, data: dict) -> "PrunedLoraConfig":
        def groups(name: str) -> dict[int, tuple[int, ...]]:
            return {int(l): tuple(int(i) for i in k) for l, k in data[name].items()}

        return cls(LoraLayout.from_fields(data["layout"]),
                   GroupSelection(int(data["head_size"]), groups("keep_heads"), groups("keep_channels")))

    @property
    def depth(self) -> int:
        return self.layout.depth

    def describe(self) -> dict:
        return {**self.layout.describe(), "heads": {str(l): len(k) for l, k in self.selection.keep_heads.items()},
                "channels": {str(l): len(k) for l, k in self.selection.keep_channels.items()}}


@register_term
@dataclass(frozen=True)
class GroupImportance(LocalTerm):
    """Ask a device to measure the importance of its attention heads and FFN channels while it trains its LoRA
    (LoRAPrune's score, smoothed over steps; ``engine/group_importance.py``); reported in its metrics."""

    kind: ClassVar[str] = "group_importance"
    smoothing: float = 0.9  # weight of the running score against the new step's (a moving average)

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")


def scheduled_sparsity(rnd: int, target: float, ramp_rounds: int) -> float:
    """Sparsity to prune to in round ``rnd`` (1-based): the cubic ramp to ``target`` over ``ramp_rounds``."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target!r}")
    if ramp_rounds < 1:
        raise ValueError(f"ramp_rounds must be >= 1, got {ramp_rounds!r}")
    progress = min(1.0, max(0, rnd) / ramp_rounds)
    return target * (1.0 - (1.0 - progress) ** 3)


def kept_count(n: int, sparsity: float, minimum: int = 1) -> int:
    """Groups of ``n`` kept at ``sparsity``: ``ceil((1 - s) n)``, at least ``minimum``."""
    return min(n, max(minimum, math.ceil((1.0 - sparsity) * n - 1e-9)))


def mean_importance(reports: Sequence[tuple[float, Mapping[int, torch.Tensor]]], groups: Mapping[int, int]
                    ) -> dict[int, torch.Tensor]:
    """Per layer, each group's weighted mean importance over the devices that reported it (0 where none did).
    ``reports``: (weight, layer -> importance of each of the layer's ``groups[layer]`` groups, NaN where the device
    did not hold the group)."""
    means = {}
    for layer, n in groups.items():
        total, weight = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for w, scores in reports:
            if layer not in scores:
                continue
            s = scores[layer].detach().to(torch.float64)
            if s.shape != (n,):
                raise ValueError(f"importance of layer {layer} must have {n} entries, got {tuple(s.shape)}")
            held = ~torch.isnan(s)
            total[held] += w * s[held]
            weight[held] += w
        means[layer] = torch.where(weight > 0, total / weight.clamp_min(1e-300), torch.zeros_like(total))
    return means


def keep_top(means: Mapping[int, torch.Tensor], sparsity: float, minimum: int = 1,
             candidates: Mapping[int, Sequence[int]] | None = None) -> dict[int, list[int]]:
    """Kept group indices per layer: the :func:`kept_count` highest means (ties: the lower index); ``candidates``:
    layer -> the groups that may be kept (pruning is for good: a group pruned before never comes back)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    kept = {}
    for layer, mean in means.items():
        n = len(mean)
        allowed = range(n) if candidates is None or layer not in candidates else candidates[layer]
        order = sorted(allowed, key=lambda g: (-float(mean[g]), g))
        kept[layer] = sorted(order[:kept_count(n, sparsity, minimum)])
    return kept


def next_mask(reports: Sequence[tuple[float, Mapping[int, torch.Tensor]]], groups: Mapping[int, int], sparsity: float,
              minimum: int = 1, candidates: Mapping[int, Sequence[int]] | None = None) -> dict[int, list[int]]:
    """Kept group indices per layer from the devices' reports (:func:`mean_importance`, then :func:`keep_top`)."""
    return keep_top(mean_importance(reports, groups), sparsity, minimum, candidates)


def elementwise_average(updates: Sequence[tuple[float, Tensors, Tensors]], previous: Tensors) -> Tensors:
    """(weight, tensors, masks) per device, full-size tensors with masks of the same shape (1: the device
    trained this entry). Keys nobody sent keep their previous value."""
    sums: dict[str, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    for w, tensors, masks in updates:
        if w < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {w}")
        for key, value in tensors.items():
            mask = masks[key].to(torch.float64)
            if mask.shape != value.shape:
                raise ValueError(f"mask of {key} has shape {tuple(mask.shape)}, its tensor {tuple(value.shape)}")
            if key not in sums:
                sums[key] = torch.zeros(value.shape, dtype=torch.float64)
                weights[key] = torch.zeros(value.shape, dtype=torch.float64)
            sums[key] += w * mask * value.detach().to(torch.float64)
            weights[key] += w * mask
    out = dict(previous)
    for key, total in sums.items():
        covered = weights[key] > 0
        old = previous.get(key)
        base = old.to(torch.float64) if old is not None else torch.zeros_like(total)
        dtype = old.dtype if old is not None else torch.float32
        out[key] = torch.where(covered, total / weights[key].clamp_min(1e-300), base).to(dtype)
    return out
