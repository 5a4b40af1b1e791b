"""FedLoRA (Zhang et al., FedPETuning, ACL 2023 Findings).

Every device trains the same LoRA rank (the run's ``lora_rank``) on all transformer layers; the server
averages the LoRA matrices and the head weighted by local examples (FedAvg). With ``pretest`` it trains one
of the paper's pre-test layouts instead (``strategies/pretests.py``; presets ``fedlora-<layout>``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.lora_layout import LoraLayout
from ..core.options import StrategyOptions, option, validate
from ..core.strategy import DeviceTask, ModelSpec
from .lora_base import LoraStrategy
from .pretests import PRETESTS, check_pretest, pretest_layout
from .registry import register_family, register_preset, register_strategy


@dataclass(frozen=True)
class FedLoRAOptions(StrategyOptions):
    pretest: str | None = option(None, "a pre-test layout of the paper's section 2: " + ", ".join(PRETESTS))
    rank_budget: int | None = option(None, "psi of the rank-* pre-tests: total rank over all L layers (default: lora_rank * L)",
                                     minimum=1, integer=True)

    legacy: ClassVar[dict[str, str]] = {"pretest": "pretest", "rank_budget": "rank_budget"}

    def __post_init__(self) -> None:
        validate(self, "fedlora.")
        if self.pretest is not None:
            check_pretest(self.pretest)


@register_strategy("fedlora", help="FedLoRA: the same LoRA rank on every layer of every device, FedAvg")
class FedLoRA(LoraStrategy):
    Options = FedLoRAOptions

    def __init__(self, options: FedLoRAOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        if self.options.pretest is not None:
            self.name = f"fedlora-{self.options.pretest}"

    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        if self.options.pretest is not None:
            return pretest_layout(self.options.pretest, spec.num_layers, self.lora_rank, self.options.rank_budget, self.seed)
        return LoraLayout.all_layers(self.lora_rank, spec.num_layers)

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        return {d: self.task(rnd, d, self.global_layout) for d in device_ids}


for _name in ("layers-a", "layers-s", "layers-m", "layers-d", "rank-inc", "rank-dec", "rank-avg", "rank-rand"):
    register_preset(f"fedlora-{_name}", "fedlora", f"FedLoRA with the pre-test layout {_name}", pretest=_name)
register_family("fedlora-depth-", "fedlora", lambda k: {"pretest": f"depth-{k}"}, "FedLoRA on the last k layers (pre-test)")
