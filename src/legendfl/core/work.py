"""What a device did in a round and how long it took: the generic measurements every runtime reports.

A device (simulated or real) reports its :class:`DeviceWork` (FLOPs, the per-layer parts a latency profile
prices, steps, depth, rank sum, bytes) and its :class:`DeviceTiming` (download, forward, backward and upload
seconds). Strategies derive what they need from these (LEGEND's capacity estimates: backward time per
trained layer, upload time per unit rank, forward time); the device knows nothing about any algorithm.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, kw_only=True)
class DeviceWork:
    """The work one device did in one round, as counted by the trainer and the bytes exchanged.

    Recorded per device and round, so a finished run can be re-timed under another cost model or fleet
    (``legendfl retime``, ``retiming.py``) without training again.
    """

    forward_flops: float
    backward_flops: float
    download_bytes: int
    upload_bytes: int
    trained_depth: int = 0  # layers whose frozen weights the backward traverses (its length; core.flops.traversed_layers)
    rank_sum: int = 0  # sum of LoRA ranks over the layers it uploads
    lora_upload_bytes: int = 0  # the LoRA part of upload_bytes
    steps: int = 0  # local optimizer steps
    layer_forward_flops: float = 0.0  # one frozen layer's forward FLOPs, summed over the round's batches
    trainable_forward_flops: float = 0.0  # forward FLOPs of the trained modules (LoRA pairs, adapters)
    trained_layers: int = 0  # traversed layers that hold trained modules (<= trained_depth)
    num_layers: int = 0
    full: bool = False  # every weight trained (full fine-tuning)
    lora_download_bytes: int = 0  # the LoRA (per-layer) part of download_bytes

    def to_json(self) -> dict:
        return asdict(self)


def counted(forward_flops: float, backward_flops: float, layer_forward_flops: float, trainable_forward_flops: float,
            steps: int) -> DeviceWork:
    """What a trainer counts of a device's round (FLOPs and steps); the bytes and the trained shape are filled in by
    the client method that knows them (``ClientMethod.work``, with ``dataclasses.replace``)."""
    return DeviceWork(forward_flops=forward_flops, backward_flops=backward_flops, download_bytes=0, upload_bytes=0,
                      steps=steps, layer_forward_flops=layer_forward_flops, trainable_forward_flops=trainable_forward_flops)


@dataclass(frozen=True)
class DeviceTiming:
    """Seconds one device spent in one round, by phase."""

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

    @classmethod
    def from_json(cls, data: dict) -> "DeviceTiming":
        return cls(float(data["download_s"]), float(data["forward_s"]), float(data["backward_s"]), float(data["upload_s"]))
