"""Capacity estimation (LEGEND, section 4.3, eq. 8-9): moving averages of what devices report.

    mu_i^h   = rho * mu_i^{h-1}   + (1 - rho) * mu-hat_i^h      (backward time of one LoRA layer)
    beta_i^h = rho * beta_i^{h-1} + (1 - rho) * beta-hat_i^h    (upload time of one layer's LoRA at unit rank)

The forward time t-hat_i of eq. 12 is averaged the same way. First report: the estimate starts at the
report itself (an average over zero history would otherwise start at 0 and call every new device fast).

Devices report generic measurements (``core.work``: the work done and the seconds of each phase); the
report of section 4.3 is derived from them here (:func:`capacity_report`), so no runtime knows LEGEND.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.strategy import DeviceResult


@dataclass(frozen=True)
class CapacityReport:
    """What the paper's devices report about their own speed (section 4.3), in seconds."""

    backward_time_per_layer: float  # mu-hat: backprop time of one LoRA layer over the round
    upload_time_per_rank: float  # beta-hat: upload time of one layer's LoRA at unit rank
    forward_time: float  # t-hat: forward propagation time over the round


def capacity_report(result: DeviceResult) -> CapacityReport | None:
    """mu-hat = backward seconds / trained depth; beta-hat = the LoRA share of the upload seconds / sum of
    uploaded ranks; t-hat = forward seconds. ``None`` when the result carries no timing or work."""
    work, timing = result.work, result.timing
    if work is None or timing is None:
        return None
    per_layer = timing.backward_s / work.trained_depth if work.trained_depth else 0.0
    lora_upload_s = timing.upload_s * work.lora_upload_bytes / work.upload_bytes if work.upload_bytes else 0.0
    per_rank = lora_upload_s / work.rank_sum if work.rank_sum else 0.0
    return CapacityReport(per_layer, per_rank, timing.forward_s)


@dataclass
class DeviceEstimate:
    backward_time_per_layer: float  # mu_i
    upload_time_per_rank: float  # beta_i
    forward_time: float  # t-hat_i
    reports: int = 1

    def completion_time(self, depth: int, rank_sum: int) -> float:
        """Eq. 12: t_i = t-hat_i + k_i * mu_i + sum of ranks * beta_i."""
        return self.forward_time + depth * self.backward_time_per_layer + rank_sum * self.upload_time_per_rank


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
            est = DeviceEstimate(report.backward_time_per_layer, report.upload_time_per_rank, report.forward_time)
        else:
            rho = self.ema
            est = DeviceEstimate(
                rho * old.backward_time_per_layer + (1 - rho) * report.backward_time_per_layer,
                rho * old.upload_time_per_rank + (1 - rho) * report.upload_time_per_rank,
                rho * old.forward_time + (1 - rho) * report.forward_time,
                old.reports + 1,
            )
        self.estimates[device_id] = est
        return est

    def known(self, device_id: int) -> bool:
        return device_id in self.estimates
