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

    def __init__(self, *, rank: int = 8, pretest: str | None = None, rank_budget: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if rank <= 0:
            raise ValueError(f"lora_rank must be a positive integer, got {rank}")
        self.rank = rank
        self.pretest = pretest  # a named layout of the paper's pre-tests (strategies/pretests.py)
        self.rank_budget = rank_budget
        if pretest is not None:
            self.name = f"fedlora-{pretest}"

    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        if self.pretest is not None:
            from .pretests import pretest_layout

            return pretest_layout(self.pretest, spec.num_layers, self.rank, self.rank_budget, self.seed)
        return LoraLayout.all_layers(self.rank, spec.num_layers)

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        return {d: self.task(rnd, d, self.global_layout) for d in device_ids}
