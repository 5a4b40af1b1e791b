"""The device cost model: how long one device's round takes (one small module, like FedScale's).

    round time of device i = download + forward + backward + upload

- download = bytes it receives / its downlink bandwidth of that round;
- forward  = forward FLOPs it really did (all layers, all its local batches) / its mode's throughput;
- backward = backward FLOPs it really did (only the layers it trains; see ``models.flops``) / throughput;
- upload   = bytes it sends / its uplink bandwidth of that round.

From the same numbers a device reports what the paper's devices report (section 4.3): the backward time of
one trained layer (mu-hat = backward / depth), the upload time of one layer's LoRA at unit rank (beta-hat =
LoRA upload time / sum of its ranks), and its forward time (t-hat), optionally with multiplicative noise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.seeding import rng
from ..core.strategy import CapacityReport
from .devices import DeviceRoundState

MEGABIT = 1e6 / 8  # bytes per megabit


@dataclass(frozen=True)
class DeviceWork:
    """The work one device did in one round, as counted by the trainer and the bytes exchanged."""

    forward_flops: float
    backward_flops: float
    download_bytes: int
    upload_bytes: int
    trained_depth: int = 0  # layers from the shallowest trained one up to the output
    rank_sum: int = 0  # sum of LoRA ranks over the layers it uploads
    lora_upload_bytes: int = 0  # the LoRA part of upload_bytes


@dataclass(frozen=True)
class DeviceTiming:
    download_s: float
    forward_s: float
    backward_s: float
    upload_s: float

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s

    @property
    def total_s(self) -> float:
        return self.download_s + self.forward_s + self.backward_s + self.upload_s

    def to_json(self) -> dict:
        return {**asdict(self), "total_s": self.total_s}


def device_timing(state: DeviceRoundState, work: DeviceWork) -> DeviceTiming:
    flops_per_s = state.gflops * 1e9
    return DeviceTiming(
        download_s=work.download_bytes / (state.downlink_mbps * MEGABIT),
        forward_s=work.forward_flops / flops_per_s,
        backward_s=work.backward_flops / flops_per_s,
        upload_s=work.upload_bytes / (state.uplink_mbps * MEGABIT),
    )


def capacity_report(state: DeviceRoundState, work: DeviceWork, timing: DeviceTiming, *,
                    noise: float = 0.0, seed: int = 0) -> CapacityReport:
    """mu-hat, beta-hat and t-hat as a device would measure them; ``noise`` is a relative std."""
    gen = rng(seed, "noise", state.round, state.device_id)

    def jitter(x: float) -> float:
        return x * max(0.05, 1.0 + noise * float(gen.standard_normal())) if noise > 0 else x

    per_layer = timing.backward_s / work.trained_depth if work.trained_depth else 0.0
    lora_upload_s = work.lora_upload_bytes / (state.uplink_mbps * MEGABIT)
    per_rank = lora_upload_s / work.rank_sum if work.rank_sum else 0.0
    return CapacityReport(jitter(per_layer), jitter(per_rank), jitter(timing.forward_s))
