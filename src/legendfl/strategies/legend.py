"""LEGEND (Liu et al., "Adaptive Parameter-Efficient Federated Fine-Tuning on Heterogeneous Devices").

Each round the server
1. updates each device's capacity estimate from its last measurements (eq. 8-9, ``capacity.py``);
2. decides every device's LoRA depth with Algorithm 1 (``lcd.py``) under one global rank distribution
   rising towards the output (eq. 10-11);
3. sends each device only the global LoRA of its last k_i layers and the head (assignment, eq. 19);
4. aggregates layer-wise: each layer averaged over the devices that trained it (eq. 17); a layer no device
   trained keeps its value.

First round, before any report: the paper does not say what a device trains before the server has any
estimate (Algorithm 1 needs completion times). Every device trains ``initial_depth`` layers, by default all
L: the configuration of FedLoRA and of LEGEND w/o LD, so LEGEND's first round costs what theirs does and
it gets no head start, and each device's first report measures its backward over every layer. (Earlier
versions used ceil(L/2), which the paper does not support and which made LEGEND's first round cheaper than
its baselines'; BENCHMARKS.md's sensitivity table reports both.) From round 2 on LCD decides.

Ablations (paper section 6.3), registered presets: ``legend-no-depth`` (every device trains all L layers
with the rank distribution) and ``legend-no-rank`` (adaptive depth, uniform ranks with the same total
budget psi); ``legend-literal`` runs Algorithm 1 as printed, ``legend-interpolated`` with line 3 read as
earlier versions did (``strategies/lcd.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.lora_layout import LoraLayout
from ..core.options import StrategyOptions, option, validate
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec
from .capacity import CapacityEstimator
from .lcd import LCD_VARIANTS, Budgets, LcdDecision, configure_depths, rank_distribution, uniform_distribution
from .lora_base import LoraStrategy
from .registry import register_preset, register_strategy


@dataclass(frozen=True)
class LegendOptions(StrategyOptions):
    rank_budget: int | None = option(None, "psi: total rank over all L layers (default: lora_rank * L)", minimum=1, integer=True)
    rank_step: int | None = option(None, "lambda: common difference of the rank distribution (None: 1 where the rank "
                                   "budget allows it, else the steepest even rise from rank 1 that fits, for deep models)",
                                   minimum=0, integer=True)
    ema: float = option(0.8, "rho: moving-average weight of capacity estimates", minimum=0.0, maximum=1.0)
    initial_depth: int | None = option(None, "LoRA depth of every device in round 1, before any report (default: L, "
                                       "FedLoRA's configuration: no head start)", minimum=1, integer=True)
    fixed_depths: list[int] | None = option(None, "pin each device's LoRA depth (one entry per device; for controlled "
                                            "experiments and runtime-equivalence checks); None: LCD decides")
    compute_budget: float | None = option(None, "C_i: per-device computing budget in units of c (None: unbounded)", minimum=0.0)
    comm_budget: float | None = option(None, "B_i: per-device upload budget in bytes per round (None: unbounded)", minimum=0.0)
    waiting_budget: float | None = option(None, "epsilon: bound on the predicted mean waiting time in seconds (None: off; "
                                          "lcd 'literal' and 'interpolated' widen the depth gap to meet it, 'fill' only "
                                          "reports it)", minimum=0.0)
    weighting: str = option("uniform", "layer-wise average: plain mean over the devices that trained a layer (eq. 17) "
                            "or weighted by their examples", choices=("uniform", "examples"))
    lcd: str = option("fill", "Algorithm 1: 'fill' = lines 2-5 as printed, then depths raised into idle time up to "
                      "the round's predicted time; 'literal' = lines 2-5 as printed; 'interpolated' = line 3 read as "
                      "linear between fastest and slowest, no fill (see strategies/lcd.py)", choices=LCD_VARIANTS)
    adaptive_depth: bool = option(True, "decide depths with LCD (False: every device trains all L layers; the "
                                  "legend-no-depth ablation)", choices=(True, False))
    rank_shape: str = option("increasing", "rank distribution: rising towards the output (eq. 10) or uniform with the "
                             "same budget (the legend-no-rank ablation)", choices=("increasing", "uniform"))

    # flat keys of earlier versions (RunConfig fields) -> option
    legacy: ClassVar[dict[str, str]] = {
        "rank_budget": "rank_budget", "rank_step": "rank_step", "ema": "ema", "initial_depth": "initial_depth",
        "fixed_depths": "fixed_depths", "compute_budget": "compute_budget", "comm_budget": "comm_budget",
        "waiting_budget": "waiting_budget", "legend_weighting": "weighting", "lcd": "lcd"}

    def __post_init__(self) -> None:
        validate(self, "legend.")
        if self.fixed_depths is not None and (
                not isinstance(self.fixed_depths, list)
                or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.fixed_depths)):
            raise ValueError(f"legend.fixed_depths must list one positive integer depth per device, got {self.fixed_depths!r}")

    def check_run(self, cfg: Any) -> None:
        """Checks against the run's common options (called by ``RunConfig`` before anything trains)."""
        if self.fixed_depths is not None and len(self.fixed_depths) != cfg.num_devices:
            raise ValueError(f"legend.fixed_depths must list one depth per device ({cfg.num_devices}), got {self.fixed_depths!r}")

    def check_num_layers(self, num_layers: int) -> None:
        """Checks against the model's layer count (called before the model's weights load, where it is known)."""
        if self.initial_depth is not None and not 1 <= self.initial_depth <= num_layers:
            raise ValueError(f"legend.initial_depth must be in [1, {num_layers}], got {self.initial_depth}")
        if self.fixed_depths is not None and not all(1 <= k <= num_layers for k in self.fixed_depths):
            raise ValueError(f"legend.fixed_depths must be in [1, {num_layers}], got {self.fixed_depths}")


@register_strategy("legend", help="LEGEND: adaptive LoRA depth (LCD) and a rank distribution rising to the output")
class Legend(LoraStrategy):
    Options = LegendOptions
    STATE = ("estimator", "last_decision")

    def __init__(self, options: LegendOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        o = self.options
        self.weighting = o.weighting
        self.budgets = Budgets(compute=o.compute_budget, comm=o.comm_budget, waiting=o.waiting_budget)
        self.estimator = CapacityEstimator(o.ema)
        self.ranks: list[int] = []
        self.last_decision: LcdDecision | None = None

    @property
    def decisions_use_time(self) -> bool:  # LCD reads the capacity estimates unless depths are pinned
        return self.options.adaptive_depth and self.options.fixed_depths is None

    def initialize(self, spec: ModelSpec, device_ids: list[int]) -> None:
        fixed = self.options.fixed_depths
        if fixed is not None and len(fixed) != len(device_ids):
            raise ValueError(f"legend.fixed_depths must list one depth per device ({len(device_ids)}), got {fixed!r}")
        super().initialize(spec, device_ids)

    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        o = self.options
        L = spec.num_layers
        budget = o.rank_budget if o.rank_budget is not None else self.lora_rank * L
        self.ranks = (rank_distribution(L, budget, o.rank_step) if o.rank_shape == "increasing"
                      else uniform_distribution(L, budget))
        o.check_num_layers(L)
        # b of eq. 15: bytes of one layer's LoRA at unit rank (fp32)
        self.budgets.bytes_per_rank = float(spec.bytes_per_param * sum(i + o for i, o in spec.linear_modules.values()))
        return LoraLayout.top(L, self.ranks)

    def depths(self, device_ids: list[int]) -> dict[int, int]:
        L = self.spec.num_layers
        o = self.options
        if not o.adaptive_depth:
            return {d: L for d in device_ids}
        if o.fixed_depths is not None:
            return {d: o.fixed_depths[d] for d in device_ids}
        first = o.initial_depth or L
        known = {d: self.estimator.estimates[d] for d in device_ids if self.estimator.known(d)}
        depths = {d: first for d in device_ids if d not in known}
        if known:
            self.last_decision = configure_depths(known, self.ranks, self.budgets, o.lcd)
            depths.update(self.last_decision.depths)
        return depths

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        return {d: self.task(rnd, d, LoraLayout.top(k, self.ranks)) for d, k in self.depths(device_ids).items()}

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        for r in results:
            self.estimator.observe(r)
        out = super().aggregate_round(rnd, results)
        if self.last_decision is not None:
            out["depth_gap"] = self.last_decision.depth_gap
            out["predicted_mean_waiting_s"] = self.last_decision.mean_waiting
            out["over_budget"] = self.last_decision.over_budget
            # t^h after the fill: the round time LCD planned for; the record's round_time_s is the realised one
            out["predicted_round_time_s"] = max(self.last_decision.predicted_times.values())
            out["lcd"] = self.options.lcd
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
        return {**super().summary(), "rank_distribution": self.ranks, "adaptive_depth": self.options.adaptive_depth,
                "lcd": self.options.lcd}


# ablations of the paper's section 6.3, and Algorithm 1 as printed
register_preset("legend-no-depth", "legend", "LEGEND w/o LD: every device trains all L layers with the rank distribution",
                adaptive_depth=False)
register_preset("legend-no-rank", "legend", "LEGEND w/o RD: adaptive depth, uniform ranks with the same budget psi",
                rank_shape="uniform")
register_preset("legend-literal", "legend", "LEGEND with Algorithm 1 as printed (lines 2-5, no idle-time fill)", lcd="literal")
register_preset("legend-interpolated", "legend", "LEGEND with Algorithm 1's line 3 read as linear between the fastest "
                "and slowest device (earlier versions' 'literal'), no idle-time fill", lcd="interpolated")
