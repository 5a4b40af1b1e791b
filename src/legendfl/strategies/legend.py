"""LEGEND (Liu et al., "Adaptive Parameter-Efficient Federated Fine-Tuning on Heterogeneous Devices").

Each round the server
1. updates each device's capacity estimate from its last report (eq. 8-9, ``core.capacity``);
2. decides every device's LoRA depth with Algorithm 1 (``core.lcd``) under one global rank distribution
   rising towards the output (eq. 10-11);
3. sends each device only the global LoRA of its last k_i layers and the head (assignment, eq. 19);
4. aggregates layer-wise: each layer averaged over the devices that trained it (eq. 17); a layer no device
   trained keeps its value.

First round, before any report: every device trains a conservative ``initial_depth`` (default ceil(L/2)) so
that its first report comes from real work at moderate cost; from round 2 on LCD decides.

Ablations (paper section 6.3): ``legend-no-depth`` (every device trains all L layers with the rank
distribution) and ``legend-no-rank`` (adaptive depth, uniform ranks with the same total budget psi).
"""
from __future__ import annotations

import math
from typing import Any

from ..core.capacity import CapacityEstimator
from ..core.lcd import LCD_VARIANTS, Budgets, LcdDecision, configure_depths, rank_distribution, uniform_distribution
from ..core.lora_layout import LoraLayout
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec
from .lora_base import LoraStrategy


class Legend(LoraStrategy):
    name = "legend"

    def __init__(self, *, rank_budget: int | None = None, rank_step: int = 1, ema: float = 0.8,
                 initial_depth: int | None = None, budgets: Budgets | None = None, adaptive_depth: bool = True,
                 rank_shape: str = "increasing", default_rank: int = 8, weighting: str = "uniform",
                 fixed_depths: list[int] | None = None, lcd: str = "fill", **kwargs: Any) -> None:
        super().__init__(weighting=weighting, **kwargs)
        if rank_shape not in ("increasing", "uniform"):
            raise ValueError(f"rank_shape must be one of ('increasing', 'uniform'), got {rank_shape!r}")
        self.rank_budget = rank_budget
        self.rank_step = rank_step
        self.initial_depth = initial_depth
        self.budgets = budgets or Budgets()
        self.adaptive_depth = adaptive_depth
        self.rank_shape = rank_shape
        self.default_rank = default_rank
        self.fixed_depths = fixed_depths
        if lcd not in LCD_VARIANTS:
            raise ValueError(f"lcd must be one of {list(LCD_VARIANTS)}, got {lcd!r}")
        self.lcd = lcd
        self.estimator = CapacityEstimator(ema)
        self.ranks: list[int] = []
        self.last_decision: LcdDecision | None = None

    @property
    def decisions_use_time(self) -> bool:  # LCD reads the capacity estimates unless depths are pinned
        return self.adaptive_depth and self.fixed_depths is None

    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        L = spec.num_layers
        budget = self.rank_budget if self.rank_budget is not None else self.default_rank * L
        self.ranks = (rank_distribution(L, budget, self.rank_step) if self.rank_shape == "increasing"
                      else uniform_distribution(L, budget))
        if self.initial_depth is not None and not 1 <= self.initial_depth <= L:
            raise ValueError(f"initial_depth must be in [1, {L}], got {self.initial_depth}")
        if self.fixed_depths is not None and not all(1 <= k <= L for k in self.fixed_depths):
            raise ValueError(f"fixed_depths must be in [1, {L}], got {self.fixed_depths}")
        # b of eq. 15: bytes of one layer's LoRA at unit rank (fp32)
        self.budgets.bytes_per_rank = float(spec.bytes_per_param * sum(i + o for i, o in spec.linear_modules.values()))
        return LoraLayout.top(L, self.ranks)

    def depths(self, device_ids: list[int]) -> dict[int, int]:
        L = self.spec.num_layers
        if not self.adaptive_depth:
            return {d: L for d in device_ids}
        if self.fixed_depths is not None:
            return {d: self.fixed_depths[d] for d in device_ids}
        first = self.initial_depth or math.ceil(L / 2)
        known = {d: self.estimator.estimates[d] for d in device_ids if self.estimator.known(d)}
        depths = {d: first for d in device_ids if d not in known}
        if known:
            self.last_decision = configure_depths(known, self.ranks, self.budgets, self.lcd)
            depths.update(self.last_decision.depths)
        return depths

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        return {d: self.task(rnd, d, LoraLayout.top(k, self.ranks)) for d, k in self.depths(device_ids).items()}

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        for r in results:
            if r.report is not None:
                self.estimator.update(r.device_id, r.report)
        out = super().aggregate_round(rnd, results)
        if self.last_decision is not None:
            out["depth_gap"] = self.last_decision.depth_gap
            out["predicted_mean_waiting_s"] = self.last_decision.mean_waiting
            out["over_budget"] = self.last_decision.over_budget
            out["predicted_round_time_s"] = self.last_decision.round_time
            out["lcd"] = self.lcd
            out["line3_depths"] = {str(d): k for d, k in sorted(self.last_decision.line3_depths.items())}
        return out

    def round_log(self, tasks: dict[int, DeviceTask]) -> dict[str, Any]:
        log = super().round_log(tasks)
        if self.last_decision is not None:
            for d, entry in log.items():
                t = self.last_decision.predicted_times.get(int(d))
                if t is not None:
                    entry["predicted_time_s"] = round(t, 4)
        return log

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "rank_distribution": self.ranks, "adaptive_depth": self.adaptive_depth, "lcd": self.lcd}


def build_legend(cfg, **common: Any) -> Legend:
    """LEGEND or an ablation from a run configuration."""
    budgets = Budgets(compute=cfg.compute_budget, comm=cfg.comm_budget, waiting=cfg.waiting_budget)
    kwargs = dict(rank_budget=cfg.rank_budget, rank_step=cfg.rank_step, ema=cfg.ema, initial_depth=cfg.initial_depth,
                  budgets=budgets, default_rank=cfg.lora_rank, weighting=cfg.legend_weighting,
                  fixed_depths=cfg.fixed_depths, lcd=cfg.lcd, **common)
    if cfg.strategy == "legend":
        return Legend(**kwargs)
    if cfg.strategy == "legend-no-depth":
        s = Legend(adaptive_depth=False, **kwargs)
    elif cfg.strategy == "legend-no-rank":
        s = Legend(rank_shape="uniform", **kwargs)
    else:
        raise ValueError(f"strategy must be one of ('legend', 'legend-no-depth', 'legend-no-rank'), got {cfg.strategy!r}")
    s.name = cfg.strategy
    return s
