"""Aggregation rules over canonical tensor dicts. Pure functions; no runtime imports."""
from __future__ import annotations

from typing import Sequence

import torch

from .strategy import Tensors


def weighted_average(updates: Sequence[tuple[float, Tensors]]) -> Tensors:
    """FedAvg: sum_i w_i x_i / sum_i w_i for every key; every update must carry the same keys and shapes."""
    if not updates:
        raise ValueError("updates must not be empty")
    keys = set(updates[0][1])
    for _, tensors in updates:
        if set(tensors) != keys:
            raise ValueError("all updates must carry the same keys for weighted_average")
    return layerwise_average(updates, previous={})


def layerwise_average(updates: Sequence[tuple[float, Tensors]], previous: Tensors) -> Tensors:
    """LEGEND's layer-wise aggregation (eq. 17), generalised to weights.

    Each key is averaged over the updates that carry it, weighted by their weights (use weight 1 for the
    paper's plain mean over the ``n_l`` devices that trained the layer). A key that no update carries keeps
    its ``previous`` value. Shapes of one key must agree across updates (LEGEND's ranks per layer are the
    same on all devices), otherwise ``ValueError``.
    """
    sums: dict[str, torch.Tensor] = {}
    totals: dict[str, float] = {}
    for weight, tensors in updates:
        if weight < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        for key, value in tensors.items():
            value = value.detach().to(torch.float64)
            if key in sums:
                if sums[key].shape != value.shape:
                    raise ValueError(f"shape mismatch for {key}: {tuple(sums[key].shape)} vs {tuple(value.shape)}")
                sums[key] += weight * value
                totals[key] += weight
            else:
                sums[key] = weight * value
                totals[key] = weight
    out = dict(previous)
    for key, total in totals.items():
        dtype = previous[key].dtype if key in previous else torch.float32
        if total <= 0:
            raise ValueError(f"total aggregation weight for {key} is 0")
        out[key] = (sums[key] / total).to(dtype)
    return out
