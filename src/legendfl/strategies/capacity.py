"""Capacity estimation (LEGEND, section 4.3, eq. 8-9): moving averages of what devices report.

    mu_i^h   = rho * mu_i^{h-1}   + (1 - rho) * mu-hat_i^h      (backward time of one LoRA layer)
    beta_i^h = rho * beta_i^{h-1} + (1 - rho) * beta-hat_i^h    (upload time of one layer's LoRA at unit rank)

The forward time t-hat_i of eq. 12 is averaged the same way. First report: the estimate starts at the
report itself (an average over zero history would otherwise start at 0 and call every new device fast).

Where this departs from eq. 12, and why: eq. 12 predicts a device's round as forward + backward + the LoRA
upload; the clock (``fleet/virtual_clock.py``, and any real round) also charges the **download** of the
device's layers and the transfer of the parts that are not LoRA (the head, both ways). Left out, the
predicted round time fell short of the realised one by 1.18-3.35x (1.72x on average, BENCHMARKS.md), and
LCD's fill raised devices into time they did not have. So the estimate also averages, the same way, the
download time of one layer's LoRA at unit rank (delta_i, from the download's LoRA share) and the time of
the fixed transfers (phi_i), and a device's predicted completion is

    t_i = phi_i + t-hat_i + k_i * mu_i + sum of ranks * (beta_i + delta_i)

which is eq. 12 plus phi_i + sum of ranks * delta_i. The paper's own beta (upload per unit rank) is unchanged.

Devices report generic measurements (``core.work``: the work done and the seconds of each phase); the
report of section 4.3 is derived from them here (:func:`capacity_report`), so no runtime knows LEGEND.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..core.lora_layout import LoraLayout
from ..core.options import StrategyOptions, option, validate
from ..core.strategy import DeviceResult, ModelSpec
from .lora_base import LoraStrategy


@dataclass(frozen=True)
class CapacityReport:
    """What the paper's devices report about their own speed (section 4.3), in seconds."""

    backward_time_per_layer: float  # mu-hat: backprop time of one LoRA layer over the round
    upload_time_per_rank: float  # beta-hat: upload time of one layer's LoRA at unit rank
    forward_time: float  # t-hat: forward propagation time over the round
    download_time_per_rank: float = 0.0  # delta-hat: download time of one layer's LoRA at unit rank
    fixed_transfer_time: float = 0.0  # phi-hat: download and upload time of what is not LoRA (the head)


def _split(seconds: float, lora_bytes: int, total_bytes: int) -> tuple[float, float]:
    """A transfer's seconds split by bytes: (the LoRA part, the rest)."""
    if total_bytes <= 0:
        return 0.0, seconds
    lora = seconds * min(lora_bytes, total_bytes) / total_bytes
    return lora, seconds - lora


def capacity_report(result: DeviceResult) -> CapacityReport | None:
    """mu-hat = backward seconds / trained depth; beta-hat (delta-hat) = the LoRA share of the upload
    (download) seconds / sum of the ranks; phi-hat = the seconds of the other bytes, both ways; t-hat =
    forward seconds. ``None`` when the result carries no timing or work."""
    work, timing = result.work, result.timing
    if work is None or timing is None:
        return None
    per_layer = timing.backward_s / work.trained_depth if work.trained_depth else 0.0
    lora_up, rest_up = _split(timing.upload_s, work.lora_upload_bytes, work.upload_bytes)
    lora_down, rest_down = _split(timing.download_s, work.lora_download_bytes, work.download_bytes)
    per_rank = (lambda s: s / work.rank_sum) if work.rank_sum else (lambda s: 0.0)
    return CapacityReport(per_layer, per_rank(lora_up), timing.forward_s, per_rank(lora_down), rest_up + rest_down)


@dataclass
class DeviceEstimate:
    backward_time_per_layer: float  # mu_i
    upload_time_per_rank: float  # beta_i
    forward_time: float  # t-hat_i
    reports: int = 1
    download_time_per_rank: float = 0.0  # delta_i
    fixed_transfer_time: float = 0.0  # phi_i

    def completion_time(self, depth: int, rank_sum: int) -> float:
        """Eq. 12 plus the download and the fixed transfers (module doc):
        t_i = phi_i + t-hat_i + k_i * mu_i + sum of ranks * (beta_i + delta_i)."""
        return (self.fixed_transfer_time + self.forward_time + depth * self.backward_time_per_layer
                + rank_sum * (self.upload_time_per_rank + self.download_time_per_rank))


@dataclass
class CapacityEstimator:
    ema: float = 0.8  # rho
    estimates: dict[int, DeviceEstimate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema <= 1.0:
            raise ValueError(f"ema must be in [0, 1], got {self.ema}")

    def observe(self, result: DeviceResult) -> None:
        """Update from a result's measurements (results without timings are ignored)."""
        report = capacity_report(result)
        if report is not None:
            self.update(result.device_id, report)

    def update(self, device_id: int, report: CapacityReport) -> DeviceEstimate:
        old = self.estimates.get(device_id)
        if old is None:
            est = DeviceEstimate(report.backward_time_per_layer, report.upload_time_per_rank, report.forward_time, 1,
                                 report.download_time_per_rank, report.fixed_transfer_time)
        else:
            rho = self.ema
            avg = lambda prev, new: rho * prev + (1 - rho) * new  # noqa: E731
            est = DeviceEstimate(
                avg(old.backward_time_per_layer, report.backward_time_per_layer),
                avg(old.upload_time_per_rank, report.upload_time_per_rank),
                avg(old.forward_time, report.forward_time),
                old.reports + 1,
                avg(old.download_time_per_rank, report.download_time_per_rank),
                avg(old.fixed_transfer_time, report.fixed_transfer_time),
            )
        self.estimates[device_id] = est
        return est

    def known(self, device_id: int) -> bool:
        return device_id in self.estimates


@dataclass(frozen=True)
class SpeedRankOptions(StrategyOptions):
    """Options of a strategy whose device ranks follow their reported speeds (:func:`ranks_by_speed`): FlexLoRA's
    and FLoRA's; ``prefix`` names the strategy's section in errors. HetLoRA's defaults (hetlora.py says why): the
    largest device rank equals FedLoRA's default rank."""

    r_min: int = option(2, "smallest device rank", minimum=1, integer=True)
    r_max: int = option(8, "largest device rank (default: FedLoRA's default rank)", minimum=1, integer=True)
    ema: float = option(0.8, "moving-average weight of the speed estimates that order devices", minimum=0.0, maximum=1.0)

    legacy: ClassVar[dict[str, str]] = {}
    prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        validate(self, self.prefix)
        if self.r_min > self.r_max:
            raise ValueError(f"{self.prefix}r_min ({self.r_min}) must be <= {self.prefix}r_max ({self.r_max})")


def ranks_by_speed(estimator: CapacityEstimator, device_ids: list[int], num_layers: int, r_min: int,
                   r_max: int) -> dict[int, int]:
    """One LoRA rank per device by its capability (HetLoRA's rule, also FlexLoRA's here): before any report every
    device gets the middle rank; afterwards ranks are spread linearly from ``r_max`` (the fastest predicted
    completion of a full-depth round at ``r_max``) to ``r_min`` (the slowest)."""
    middle = (r_min + r_max) // 2
    known = {d: estimator.estimates[d].completion_time(num_layers, num_layers * r_max)
             for d in device_ids if estimator.known(d)}
    ranks = {d: middle for d in device_ids}
    if known:
        t_max, t_min = max(known.values()), min(known.values())
        for d, t in known.items():
            share = (t_max - t) / (t_max - t_min) if t_max > t_min else 1.0
            ranks[d] = r_min + round(share * (r_max - r_min))
    return ranks


class SpeedRankedLora(LoraStrategy):
    """A LoRA strategy whose devices train every layer at ranks that follow their reported speeds (FlexLoRA, FLoRA):
    the speed estimator (state), a global layout at ``r_max`` on every layer, and each round's ranks."""

    Options = SpeedRankOptions
    STATE = ("estimator",)
    decisions_use_time = True  # ranks follow the devices' reported speeds

    def __init__(self, options: SpeedRankOptions | None = None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.estimator = CapacityEstimator(self.options.ema)

    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        return LoraLayout.all_layers(self.options.r_max, spec.num_layers)

    def round_ranks(self, device_ids: list[int]) -> dict[int, int]:
        o = self.options
        return ranks_by_speed(self.estimator, device_ids, self.spec.num_layers, o.r_min, o.r_max)

    def observe(self, results: list[DeviceResult]) -> None:
        for r in results:
            self.estimator.observe(r)
