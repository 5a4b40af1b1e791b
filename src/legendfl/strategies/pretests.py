"""The paper's pre-test configurations (section 2) as named, reusable FedLoRA layouts.

- LoRA position (Fig. 3): ``layers-a`` (all layers), ``layers-s`` / ``layers-m`` / ``layers-d`` (the
  shallow / middle / deep third of the layers; for 12 layers: {0-3}, {4-7}, {8-11}), rank 8.
- LoRA depth (Fig. 4): ``depth-k`` for k in 1..L: the last k layers at rank 8.
- Rank distribution (Fig. 5), the same total budget psi (default 8 * L) over all L layers:
  ``rank-inc`` (LEGEND's arithmetic distribution, lambda = 1), ``rank-dec`` (its reverse), ``rank-avg``
  (uniform) and ``rank-rand`` (the increasing ranks in a random order drawn from the seed, so only the
  placement differs from ``rank-inc``).
  The paper's 12-layer example (psi = 96) was Inc [4,4,5,6,7,7,8,9,10,11,12,13]; ours for that case is
  [2,3,4,5,6,7,9,10,11,12,13,14] (difference exactly 1), increasing with the same total.
"""
from __future__ import annotations

import re

from .lcd import rank_distribution
from ..core.lora_layout import LoraLayout
from ..core.seeding import rng

PRETESTS = ("layers-a", "layers-s", "layers-m", "layers-d", "depth-<k>", "rank-inc", "rank-dec", "rank-avg", "rank-rand")


def check_pretest(name: str) -> None:
    """Refuse an unknown pre-test name (before the model's depth is known)."""
    if name in PRETESTS or re.fullmatch(r"depth-[1-9]\d*", name):
        return
    raise ValueError(f"pretest must be one of {list(PRETESTS)}, got {name!r}")


def pretest_layout(name: str, num_layers: int, rank: int = 8, rank_budget: int | None = None, seed: int = 0) -> LoraLayout:
    L = num_layers
    budget = rank_budget if rank_budget is not None else rank * L
    third = L // 3
    positions = {"layers-a": range(L), "layers-s": range(0, third), "layers-m": range(third, L - third),
                 "layers-d": range(L - third, L)}
    if name in positions:
        return LoraLayout.uniform(positions[name], rank, L)
    m = re.fullmatch(r"depth-(\d+)", name)
    if m:
        return LoraLayout.top(int(m.group(1)), [rank] * L)
    if name == "rank-inc":
        return LoraLayout.top(L, rank_distribution(L, budget, 1))
    if name == "rank-dec":
        return LoraLayout.top(L, rank_distribution(L, budget, 1)[::-1])
    if name == "rank-avg":
        return LoraLayout.top(L, rank_distribution(L, budget, 0))
    if name == "rank-rand":
        ranks = rank_distribution(L, budget, 1)
        return LoraLayout.top(L, [ranks[i] for i in rng(seed, "init", 7).permutation(L)])
    raise ValueError(f"pretest must be one of {list(PRETESTS)}, got {name!r}")
