"""Update validation before aggregation: a device's upload is checked against what it was sent.

An update is rejected (with the reason recorded) when it has missing or unexpected tensors, a tensor of the
wrong shape or dtype, a NaN or Inf, a norm of its change beyond a bound, or a non-positive example count.
The strategy then aggregates the others, exactly as if that device had not answered. Both runtimes call
this through ``Strategy.screen``, so a bad Flower node and a bad simulated device are handled the same way.
"""
from __future__ import annotations

import math
from typing import Any


def update_problem(task: Any, result: Any, max_update_norm: float | None = None) -> str | None:
    """Why ``result`` (a ``DeviceResult``) cannot be aggregated, as one line, or ``None`` when it is sound;
    ``task`` is the ``DeviceTask`` the device was sent."""
    import torch

    expected, got = task.params, result.params
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing:
        return f"missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}"
    if extra:
        return f"unexpected tensors {extra[:3]}{' ...' if len(extra) > 3 else ''}"
    if isinstance(result.num_examples, bool) or not isinstance(result.num_examples, int) or result.num_examples <= 0:
        return f"num_examples must be a positive integer, got {result.num_examples!r}"
    change = 0.0
    for key, sent in expected.items():
        value = got[key]
        if not isinstance(value, torch.Tensor):
            return f"{key}: not a tensor ({type(value).__name__})"
        if tuple(value.shape) != tuple(sent.shape):
            return f"{key}: shape {tuple(value.shape)}, expected {tuple(sent.shape)}"
        if value.dtype != sent.dtype:
            return f"{key}: dtype {value.dtype}, expected {sent.dtype}"
        if not bool(torch.isfinite(value).all()):
            return f"{key}: NaN or Inf values"
        change += float((value.double() - sent.double()).pow(2).sum())
    norm = math.sqrt(change)
    if max_update_norm is not None and norm > max_update_norm:
        return f"update norm {norm:.4g} exceeds max_update_norm {max_update_norm:g}"
    return None
