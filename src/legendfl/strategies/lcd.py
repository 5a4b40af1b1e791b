"""LoRA Configuration Determination (LEGEND, Algorithm 1, eq. 10-16). Pure functions.

With t_i the predicted completion time of device i at full depth (eq. 12 with all L layers and the global
rank distribution, plus the transfers eq. 12 leaves out: ``capacity.py``), t^h the slowest and t_min the
fastest, Algorithm 1 as printed reads

    line 2: k^h   = ceil(L * (t^h - t_min) / t^h)                                   (the depth gap)
    line 3: k_i^h = ceil(k^h * (t^h - t_i) / t^h)

Taken alone, line 3 gives the slowest device depth 0. The text says what it is for: "the most powerful
device is assigned with maximum LoRA depth L, the weakest device is assigned with LoRA depth of L - k^h,
while other devices are assigned values within the gap [L - k^h, L]", so line 3's value is the device's
depth **above** the weakest one's:

    printed: depth_i = L - k^h + ceil(k^h * (t^h - t_i) / t^h)

(the fastest gets L - k^h + ceil(k^h (1 - t_min / t^h)) <= L, equal to L whenever t_min / t^h is small).
k^h is clipped to [0, L - 1] so that no device gets depth 0 (as printed, k^h = L when t_min / t^h <
1 / L). An earlier reading, kept as the ``interpolated`` variant, places depths linearly between the
fastest and the slowest instead: depth_i = L - ceil(k^h * (t_i - t_min) / (t^h - t_min)) (the fastest
always gets L; over the 270 device-rounds of the earlier seeds benchmark it gave 0.72 fewer layers per
device than the printed line, never more).

Line 4, the rank distribution: r_l = r_0 + lambda * l (eq. 10, non-decreasing towards the output), with r_0
the largest integer >= 1 such that sum_l r_l <= psi (eq. 11); the integer remainder psi - sum (< L) is
added, one each, to the layers closest to the output, which keeps the ranks non-decreasing and uses the
budget whole.

Line 5, budgets: each device's depth is lowered greedily until eq. 14 (``hat_c + c * sum of its ranks <=
C_i``) and eq. 15 (``b * sum of its ranks <= B_i``) hold; a device that violates them even at depth 1 keeps
depth 1 and is flagged.

Three variants (``LCD_VARIANTS``):

- ``fill`` (the default): lines 2-5 as printed, then the round lasts as long as its slowest device, t^h =
  the largest predicted completion at those depths, and each other device's depth is raised, one layer at
  a time, while its predicted completion stays <= t^h and its budgets hold. This is the paper's
  waiting-time objective (eq. 13, 16: "the average waiting time ... cannot exceed epsilon", and section
  6.2: LEGEND "achieves the least waiting time ... by assigning appropriate depth to devices"): line 3's
  ceil takes layers from devices that would then idle. Filling never lowers a depth below line 3's and
  never lengthens the predicted round. The rank of a layer is the global distribution's (ranks are not
  raised per device: eq. 17 averages each layer over devices, which needs one rank per layer). epsilon is
  not used to lower depths; the decision reports the predicted mean waiting against it.
- ``literal``: Algorithm 1 as printed, lines 2-5 only (the ``legend-literal`` preset).
- ``interpolated``: lines 2, 4, 5 as printed with the interpolated line 3 above, no fill (the
  ``legend-interpolated`` preset; the ``literal`` variant of earlier versions).

Where epsilon is set, ``literal`` and ``interpolated`` meet it by widening the depth gap k^h step by step
(up to L - 1), which lowers depths and keeps them monotone in speed; the printed lines do not use epsilon,
and by default it is unset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .capacity import DeviceEstimate

LCD_VARIANTS = ("fill", "literal", "interpolated")


def rank_distribution(num_layers: int, rank_budget: int, rank_step: int | None = 1) -> list[int]:
    """Global ranks r_0..r_{L-1}: arithmetic with difference ``rank_step``, sum <= ``rank_budget``.

    ``rank_step=None`` takes 1 where the budget allows it and otherwise (a deep model: 30 layers at rank 8
    cannot rise by 1 per layer) the steepest even rise that fits, from rank 1 at the bottom layer:
    ``r_l = 1 + floor(l * 2 (psi - L) / (L (L - 1)))``. Any rank the rounding leaves over goes to the top layers.
    """
    if num_layers <= 0:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    if rank_step is None:
        if rank_budget >= num_layers + num_layers * (num_layers - 1) // 2 or num_layers == 1:
            rank_step = 1
        else:
            if rank_budget < num_layers:
                raise ValueError(f"rank_budget must be >= {num_layers} for {num_layers} layers, got {rank_budget}")
            step = 2 * (rank_budget - num_layers) / (num_layers * (num_layers - 1))
            return _fill_top([1 + math.floor(l * step + 1e-9) for l in range(num_layers)], rank_budget)
    if rank_step < 0:
        raise ValueError(f"rank_step must be >= 0, got {rank_step}")
    rise = rank_step * num_layers * (num_layers - 1) // 2
    r0 = (rank_budget - rise) // num_layers
    if r0 < 1:
        raise ValueError(f"rank_budget must be >= {num_layers + rise} for {num_layers} layers with rank_step "
                         f"{rank_step}, got {rank_budget}")
    return _fill_top([r0 + rank_step * l for l in range(num_layers)], rank_budget)


def _fill_top(ranks: list[int], rank_budget: int) -> list[int]:
    """Add the budget ``ranks`` leave over, one unit per layer from the top down (again while any is left)."""
    leftover = rank_budget - sum(ranks)
    n = len(ranks)
    for i in range(leftover):
        ranks[n - 1 - i % n] += 1
    return ranks


def uniform_distribution(num_layers: int, rank_budget: int) -> list[int]:
    """The same total budget spread evenly (LEGEND w/o rank distribution); remainder to the top layers."""
    return rank_distribution(num_layers, rank_budget, 0)


@dataclass
class Budgets:
    """Per-device resource budgets of eq. 14-16; ``None`` means unbounded."""

    compute: dict[int, float] | float | None = None  # C_i
    comm: dict[int, float] | float | None = None  # B_i, bytes
    waiting: float | None = None  # epsilon, seconds
    compute_per_rank: float = 1.0  # c
    compute_forward: float = 0.0  # hat_c
    bytes_per_rank: float = 1.0  # b: bytes of one layer's LoRA at unit rank

    def _of(self, value, device: int) -> float | None:
        if isinstance(value, dict):
            return value.get(device)
        return value

    def allows(self, device: int, rank_sum: int) -> bool:
        c, b = self._of(self.compute, device), self._of(self.comm, device)
        if c is not None and self.compute_forward + self.compute_per_rank * rank_sum > c:
            return False
        if b is not None and self.bytes_per_rank * rank_sum > b:
            return False
        return True


@dataclass
class LcdDecision:
    depths: dict[int, int]
    depth_gap: int
    predicted_times: dict[int, float]  # eq. 12 at the chosen depths
    full_depth_times: dict[int, float]  # eq. 12 at depth L (the speeds that order devices)
    over_budget: list[int] = field(default_factory=list)
    line3_depths: dict[int, int] = field(default_factory=dict)  # after lines 3 and 5, before any fill
    round_time: float = 0.0  # t^h: the predicted round time the fill stays within
    variant: str = "fill"

    @property
    def mean_waiting(self) -> float:
        if not self.predicted_times:
            return 0.0
        slowest = max(self.predicted_times.values())
        return sum(slowest - t for t in self.predicted_times.values()) / len(self.predicted_times)


def _top_rank_sum(ranks: list[int], depth: int) -> int:
    return sum(ranks[len(ranks) - depth:])


def depths_for_gap(full_times: dict[int, float], num_layers: int, gap: int, reading: str = "printed") -> dict[int, int]:
    """Algorithm 1, line 3: ``printed`` (the line as printed, above the weakest device's L - k^h) or
    ``interpolated`` (linear between the fastest and the slowest); see the module doc."""
    t_max, t_min = max(full_times.values()), min(full_times.values())
    spread = t_max - t_min
    if spread <= 0 or gap == 0:
        return {d: num_layers for d in full_times}
    if reading == "printed":
        return {d: num_layers - gap + math.ceil(gap * (t_max - t) / t_max - 1e-12) for d, t in full_times.items()}
    return {d: num_layers - math.ceil(gap * (t - t_min) / spread - 1e-12) for d, t in full_times.items()}


def fill_idle_time(depths: dict[int, int], estimates: dict[int, DeviceEstimate], ranks: list[int], budgets: Budgets,
                   ceiling: float) -> dict[int, int]:
    """Raise each device's depth while its predicted completion stays <= ``ceiling`` and its budgets hold."""
    L = len(ranks)
    out = dict(depths)
    for d, k in depths.items():
        est = estimates[d]
        while (k < L and est.completion_time(k + 1, _top_rank_sum(ranks, k + 1)) <= ceiling * (1 + 1e-12)
               and budgets.allows(d, _top_rank_sum(ranks, k + 1))):
            k += 1
        out[d] = k
    return out


def configure_depths(estimates: dict[int, DeviceEstimate], ranks: list[int], budgets: Budgets | None = None,
                     variant: str = "fill") -> LcdDecision:
    """Algorithm 1: each device's LoRA depth given capacity estimates and the global rank distribution."""
    if not estimates:
        raise ValueError("estimates must not be empty")
    if variant not in LCD_VARIANTS:
        raise ValueError(f"lcd must be one of {list(LCD_VARIANTS)}, got {variant!r}")
    budgets = budgets or Budgets()
    L = len(ranks)
    full = {d: e.completion_time(L, sum(ranks)) for d, e in estimates.items()}
    t_max, t_min = max(full.values()), min(full.values())
    gap = min(L - 1, math.ceil(L * (t_max - t_min) / t_max - 1e-12)) if t_max > 0 else 0
    gap = max(gap, 0)

    reading = "interpolated" if variant == "interpolated" else "printed"

    def decide(g: int) -> LcdDecision:
        depths = depths_for_gap(full, L, g, reading)
        over = []
        for d in depths:  # line 5: greedy depth reduction until eq. 14 and 15 hold
            while depths[d] > 1 and not budgets.allows(d, _top_rank_sum(ranks, depths[d])):
                depths[d] -= 1
            if not budgets.allows(d, _top_rank_sum(ranks, depths[d])):
                over.append(d)
        return LcdDecision(depths, g, times_at(depths), full, over, dict(depths), variant=variant)

    def times_at(depths: dict[int, int]) -> dict[int, float]:
        return {d: estimates[d].completion_time(k, _top_rank_sum(ranks, k)) for d, k in depths.items()}

    decision = decide(gap)
    if variant != "fill" and budgets.waiting is not None:
        while decision.mean_waiting > budgets.waiting and decision.depth_gap < L - 1:
            decision = decide(decision.depth_gap + 1)
    decision.round_time = max(decision.predicted_times.values())
    if variant == "fill":
        decision.depths = fill_idle_time(decision.depths, estimates, ranks, budgets, decision.round_time)
        decision.predicted_times = times_at(decision.depths)
    return decision
