"""Update validation before aggregation: a device's upload is checked against what it was sent.

An update is rejected (with the reason recorded) when it has missing or unexpected tensors, a tensor of the
wrong shape or dtype, a NaN or Inf, a non-positive example count or more examples than the device can have
trained on, or a change larger than a bound. The strategy then aggregates the others, exactly as if that
device had not answered. Both runtimes call this through ``Strategy.screen``, so a bad Flower node and a bad
simulated device are handled the same way.

**The default bound on the change** is what AdamW can do at most: every client method trains with AdamW
(``engine.trainer``), whose step moves each weight by at most ``lr * c_t`` (``adamw_step_bound``), so after
``T`` steps no honest update's change exceeds ``adamw_change_bound``. Unlike a fixed number it follows the
method, rank, learning rate and number of steps. ``max_update_norm`` replaces it (a client method with
another optimizer; ``inf`` for none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .training import ADAMW_BETAS


@dataclass(frozen=True)
class UpdateLimit:
    """What one device can honestly have done in a round, from the run's training settings and the size of its
    partition (``TrainConfig.local_steps``): the runtime knows these, the device's reply is not trusted for them."""

    partition_size: int
    max_steps: int
    max_examples: int
    weight_decay: float


def adamw_step_bound(t: int, betas: tuple[float, float] = ADAMW_BETAS) -> float:
    """The largest ``|m_hat / (sqrt(v_hat) + eps)|`` at AdamW's step ``t`` over every gradient history.

    With ``m_t = sum_i (1-b1) b1^(t-i) g_i`` and ``v_t = sum_i (1-b2) b2^(t-i) g_i^2``, Cauchy-Schwarz gives
    ``|m_t| <= sqrt(sum_k (1-b1)^2 b1^(2k) / ((1-b2) b2^k)) * sqrt(v_t)``; bias correction multiplies the ratio
    by ``sqrt(1-b2^t) / (1-b1^t)``; eps only makes it smaller. Step 1 gives 1 (a sign step); for torch's
    defaults it rises to about 7.3. (Kingma and Ba's 3.16 for this case is the usual, not the largest, step.)"""
    b1, b2 = betas
    r = b1 * b1 / b2
    series = t if r == 1 else (1 - r ** t) / (1 - r)
    return (1 - b1) / math.sqrt(1 - b2) * math.sqrt(series) * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)


def adamw_change_bound(numel: int, start_norm: float, lr: float, steps: int, weight_decay: float,
                       betas: tuple[float, float] = ADAMW_BETAS) -> float:
    """The largest L2 change of ``numel`` weights starting at norm ``start_norm`` after ``steps`` AdamW steps at
    ``lr`` (torch's AdamW: decay ``w -= lr * wd * w``, then ``w -= lr * m_hat / (sqrt(v_hat) + eps)``)."""
    drift = 0.0
    for t in range(1, steps + 1):
        drift += lr * weight_decay * (start_norm + drift) + lr * adamw_step_bound(t, betas) * math.sqrt(numel)
    return drift


def update_change(task: Any, result: Any) -> tuple[float, float, int]:
    """The L2 norm of the change ``result`` makes to what ``task`` sent, the norm of what was sent and the
    number of weights (shapes as sent; call after the structural checks of :func:`check_update`)."""
    change = start = 0.0
    numel = 0
    for key, sent in task.params.items():
        change += float((result.params[key].double() - sent.double()).pow(2).sum())
        start += float(sent.double().pow(2).sum())
        numel += sent.numel()
    return math.sqrt(change), math.sqrt(start), numel


def change_bound(task: Any, numel: int, start_norm: float, max_update_norm: float | None,
                 limit: UpdateLimit | None) -> float | None:
    """The largest change accepted from the device of ``task``: ``max_update_norm`` where set, else AdamW's (None
    without a ``limit``)."""
    if max_update_norm is not None:
        return max_update_norm
    if limit is None:
        return None
    return adamw_change_bound(numel, start_norm, task.lr, limit.max_steps, limit.weight_decay)


@dataclass(frozen=True)
class UpdateCheck:
    """The verdict on one device's update: why it cannot be aggregated (``problem``; None when sound) and, once
    its structure is sound, its change (L2 norm over all its tensors) and the bound it was held to (None: none)."""

    problem: str | None
    norm: float | None = None
    bound: float | None = None

    def record_fields(self) -> dict[str, float | None]:
        """The change and its bound, as a device's record entry shows them."""
        return {"update_norm": None if self.norm is None else round(self.norm, 6),
                "update_norm_bound": None if self.bound is None else round(self.bound, 6)}


def check_update(task: Any, result: Any, max_update_norm: float | None = None,
                 limit: UpdateLimit | None = None) -> UpdateCheck:
    """Whether ``result`` (a ``DeviceResult``) can be aggregated; ``task`` is the ``DeviceTask`` the device was
    sent, ``limit`` what the device can have done (None: no bound on examples, and no change bound unless
    ``max_update_norm`` gives one). The change is measured once, here."""
    import torch

    expected, got = task.params, result.params
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing:
        return UpdateCheck(f"missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if extra:
        return UpdateCheck(f"unexpected tensors {extra[:3]}{' ...' if len(extra) > 3 else ''}")
    if isinstance(result.num_examples, bool) or not isinstance(result.num_examples, int) or result.num_examples <= 0:
        return UpdateCheck(f"num_examples must be a positive integer, got {result.num_examples!r}")
    if limit is not None and result.num_examples > limit.max_examples:
        return UpdateCheck(f"num_examples {result.num_examples} exceeds the {limit.max_examples} a device holding "
                           f"{limit.partition_size} examples trains on in a round")
    for key, sent in expected.items():
        value = got[key]
        if not isinstance(value, torch.Tensor):
            return UpdateCheck(f"{key}: not a tensor ({type(value).__name__})")
        if tuple(value.shape) != tuple(sent.shape):
            return UpdateCheck(f"{key}: shape {tuple(value.shape)}, expected {tuple(sent.shape)}")
        if value.dtype != sent.dtype:
            return UpdateCheck(f"{key}: dtype {value.dtype}, expected {sent.dtype}")
        if not bool(torch.isfinite(value).all()):
            return UpdateCheck(f"{key}: NaN or Inf values")
    norm, start, numel = update_change(task, result)
    bound = change_bound(task, numel, start, max_update_norm, limit)
    problem = None
    if bound is not None and norm > bound:
        problem = (f"update norm {norm:.4g} exceeds max_update_norm {max_update_norm:g}" if max_update_norm is not None else
                   f"update norm {norm:.4g} exceeds {bound:.4g}, the most {limit.max_steps} AdamW steps at lr "
                   f"{task.lr:g} can change these {numel:,} weights (max_update_norm sets another bound)")
    return UpdateCheck(problem, norm, bound)

