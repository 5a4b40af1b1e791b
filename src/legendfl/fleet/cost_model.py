"""The device cost model: how long one device's round takes (one small module, like FedScale's).

    round time of device i = download + forward + backward + upload

Download and upload are the bytes really exchanged over the device's bandwidth of that round. Compute is
priced by one of two models (``COST_MODELS``); every record says which one timed it:

``profile`` (the default wherever the fleet has a profile): a **measured per-batch latency profile** of a
reference device, for a reference model and batch: forward time of one layer, backward time of one
trained layer (its frozen weights' input gradients plus its trainable modules), backward time of a frozen
layer that the backward pass still traverses (above the shallowest trained layer), and a fixed per-step
cost (optimizer step, head, launches). It is scaled by two rules:

- to another model or batch by FLOPs: every per-layer time is multiplied by (one layer's forward FLOPs on
  this batch) / (one layer's forward FLOPs on the reference batch); the trainable modules' own forward
  (LoRA pairs, adapters) is priced at the forward rate and their backward at the trained-layer ratio;
  the per-step cost does not scale;
- to another power mode by throughput: times are multiplied by ``reference_gflops / gflops of the mode``,
  so the fleet's mode ladders (and the paper's 100x spread) carry over unchanged.

Full fine-tuning's backward also computes every weight gradient: one more layer forward per layer.
Why a profile: on GPU-class devices the backward of a trained layer costs several times its forward
(LEGEND Fig. 4a: +5 ms per LoRA layer against ~1.4 ms forward per layer; an H100: depth 12 / depth 1 =
3.9x), which a FLOP count does not show.

``flops``: FLOPs the device really did (``models.flops``) over its mode's throughput. On this project's
2-core CPU that ratio matches (depth 6 / depth 1 = 1.71x measured), so it describes a CPU, not a Jetson.

From the same numbers a device reports what the paper's devices report (section 4.3): the backward time of
one trained layer (mu-hat = backward / depth), the upload time of one layer's LoRA at unit rank (beta-hat =
LoRA upload time / sum of its ranks), and its forward time (t-hat), optionally with multiplicative noise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.seeding import rng
from ..core.strategy import CapacityReport
from .devices import DeviceRoundState
from .profiles import LatencyProfile

MEGABIT = 1e6 / 8  # bytes per megabit
COST_MODELS = ("profile", "flops")


@dataclass(frozen=True)
class DeviceWork:
    """The work one device did in one round, as counted by the trainer and the bytes exchanged.

    Recorded per device and round, so a finished run can be re-timed under another cost model or fleet
    (``fleet.retime``) without training again.
    """

    forward_flops: float
    backward_flops: float
    download_bytes: int
    upload_bytes: int
    trained_depth: int = 0  # layers from the shallowest trained one up to the output (the backward's length)
    rank_sum: int = 0  # sum of LoRA ranks over the layers it uploads
    lora_upload_bytes: int = 0  # the LoRA part of upload_bytes
    steps: int = 0  # local optimizer steps
    layer_forward_flops: float = 0.0  # one frozen layer's forward FLOPs, summed over the round's batches
    trainable_forward_flops: float = 0.0  # forward FLOPs of the trained modules (LoRA pairs, adapters)
    trained_layers: int = 0  # layers holding trained modules (<= trained_depth)
    num_layers: int = 0
    full: bool = False  # every weight trained (full fine-tuning)

    def to_json(self) -> dict:
        return asdict(self)


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


def profile_compute(profile: LatencyProfile, gflops: float, work: DeviceWork) -> tuple[float, float]:
    """(forward, backward) seconds of ``work`` under a measured latency profile, at a mode of ``gflops``."""
    slow = profile.reference_gflops / gflops  # this mode against the one the profile was measured in
    unit = profile.forward_ms_per_layer / 1000.0 / profile.reference_layer_flops  # s per FLOP of layer forward
    trained = profile.backward_ms_per_trained_layer / profile.forward_ms_per_layer
    frozen = profile.backward_ms_per_frozen_layer / profile.forward_ms_per_layer
    lf, tf = work.layer_forward_flops, work.trainable_forward_flops
    forward = unit * (work.num_layers * lf + tf)
    if work.full:
        backward = unit * (trained + 1.0) * work.num_layers * lf
    else:
        traversed_frozen = max(0, work.trained_depth - work.trained_layers)
        backward = unit * (trained * (work.trained_layers * lf + tf) + frozen * traversed_frozen * lf)
    if work.trained_depth or work.full:
        backward += profile.step_ms / 1000.0 * work.steps
    return slow * forward, slow * backward


def timed_by(state: DeviceRoundState, cost_model: str) -> str:
    """Which model times this device: ``profile`` needs a profile in the fleet, else FLOPs are used."""
    if cost_model not in COST_MODELS:
        raise ValueError(f"cost_model must be one of {list(COST_MODELS)}, got {cost_model!r}")
    return "profile" if cost_model == "profile" and state.profile is not None else "flops"


def device_timing(state: DeviceRoundState, work: DeviceWork, cost_model: str = "profile") -> DeviceTiming:
    if timed_by(state, cost_model) == "profile":
        forward_s, backward_s = profile_compute(state.profile, state.gflops, work)
    else:
        flops_per_s = state.gflops * 1e9
        forward_s, backward_s = work.forward_flops / flops_per_s, work.backward_flops / flops_per_s
    return DeviceTiming(
        download_s=work.download_bytes / (state.downlink_mbps * MEGABIT),
        forward_s=forward_s,
        backward_s=backward_s,
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
