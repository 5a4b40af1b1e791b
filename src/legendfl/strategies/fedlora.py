"""FedLoRA (Zhang et al., FedPETuning, ACL 2023 Findings).

Every device trains the same LoRA rank on all transformer layers; the server averages the LoRA matrices
and the head weighted by local examples (FedAvg).
"""
from __future__ import annotations

from typing import Any

from ..core.lora_layout import LoraLayout
from ..core.strategy import DeviceTask, ModelSpec
from .lora_base import LoraStrategy


class FedLoRA(LoraStrategy):
    name = "fedlora"

    def __init__(self, *, rank: int = 8, layers: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if rank <= 0:
            raise ValueError(f"lora_rank must be a positive integer, got {rank}")
        self.rank = rank
        self.layers = layers  # None = all layers; a subset for the paper's position pre-tests

    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        layers = range(spec.num_layers) if self.layers is None else self.layers
        return LoraLayout.uniform(layers, self.rank, spec.num_layers)

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        return {d: self.task(rnd, d, self.global_layout) for d in device_ids}
