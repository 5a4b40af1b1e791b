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

``flops``: FLOPs the device really did (``core.flops``) over its mode's throughput. On this project's
2-core CPU that ratio matches (depth 6 / depth 1 = 1.71x measured), so it describes a CPU, not a Jetson.

A simulated device reports its timing (``measured_timing``, optionally with multiplicative noise) and its
work; strategies derive what they need from those (LEGEND's mu-hat, beta-hat, t-hat: ``strategies/capacity.py``).
"""
from __future__ import annotations

from ..core.seeding import rng
from ..core.work import DeviceTiming, DeviceWork
from .devices import DeviceRoundState
from .profiles import LatencyProfile

MEGABIT = 1e6 / 8  # bytes per megabit
COST_MODELS = ("profile", "flops")


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
    backward += profile.step_ms / 1000.0 * work.steps  # every local step ends in an optimizer step
    return slow * forward, slow * backward


def timed_by(state: DeviceRoundState, cost_model: str) -> str:
    """Which model times this device: ``profile`` needs a profile in the fleet, else FLOPs are used."""
    if cost_model not in COST_MODELS:
        raise ValueError(f"cost_model must be one of {list(COST_MODELS)}, got {cost_model!r}")
    return "profile" if cost_model == "profile" and state.profile is not None else "flops"


def state_fields(kind: str, state: DeviceRoundState, cost_model: str) -> dict:
    """A simulated device's fields of a round record: its type, mode, throughput, bandwidth, and which cost
    model timed it (the simulator and re-timing both write these)."""
    return {"kind": kind, "mode": state.mode, "gflops": state.gflops, "timed_by": timed_by(state, cost_model),
            "uplink_mbps": round(state.uplink_mbps, 3), "downlink_mbps": round(state.downlink_mbps, 3)}


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


def measured_timing(state: DeviceRoundState, timing: DeviceTiming, *, noise: float = 0.0, seed: int = 0) -> DeviceTiming:
    """What a simulated device measures of its own timing: the true one, or with multiplicative noise of
    relative std ``noise`` on backward, upload and forward (drawn in that order from (seed, round, device))."""
    if noise <= 0:
        return timing
    gen = rng(seed, "noise", state.round, state.device_id)

    def jitter(x: float) -> float:
        return x * max(0.05, 1.0 + noise * float(gen.standard_normal()))

    backward, upload, forward = jitter(timing.backward_s), jitter(timing.upload_s), jitter(timing.forward_s)
    return DeviceTiming(timing.download_s, forward, backward, upload)
