"""FedEx-LoRA (Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient Fine-Tuning of Foundation
Models", ACL 2025; code: github.com/RaghavSinghal10/fedex-lora).

1. Devices: FedLoRA's, every device trains LoRA at the run's ``lora_rank`` on every layer, starting from the
   global A and B (client method ``merged-lora``: on frozen weights that carry the change below).
2. Aggregation: A-bar and B-bar are the averages of the devices' A and B (weighted by examples, as every strategy
   here weights; the official code weights its equal-sized clients equally), as in FedLoRA; their product is not
   the average of the products, so the residual ``sum_k p_k B_k A_k - B-bar A-bar`` is folded into the frozen
   weights (times the LoRA scaling), which makes the global model exactly ``W + scaling * sum_k p_k B_k A_k``.
3. Traffic: the residual is sent as factors, ``[p_1 B_1 ... p_n B_n, -B-bar]`` and ``[A_1; ...; A_n; A-bar]``, of
   rank (n + 1) r per module, to each device in the next round it takes part in (a device that missed rounds gets
   the residuals it missed, or the dense change where those would be larger: ``core/base_delta.py``). The paper
   sends the residual to the clients too; sending it dense instead would cost in x out numbers per module.
4. The head (not in the paper, which tunes models with their LoRA only): averaged by examples.

The exported artefact is the global model with the change and the final LoRA merged (``merged_model/``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core.base_delta import DELTA_A, DELTA_B, MERGED_LORA, BaseDeltaLedger, stem_of
from ..core.lora_layout import LoraLayout
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec, Tensors
from .lora_base import LoraStrategy
from .registry import register_strategy


def residual_factors(updates: list[tuple[float, Tensors]], average: Tensors) -> Tensors:
    """Per LoRA pair: the factors of ``sum_k p_k B_k A_k - B-bar A-bar`` (p_k the normalised weights; ``average``
    holds A-bar and B-bar), as ``delta_B = [p_1 B_1, ..., p_n B_n, -B-bar]`` and ``delta_A = [A_1; ...; A_n; A-bar]``."""
    total = sum(w for w, _ in updates)
    if total <= 0:
        raise ValueError("the aggregation weights must sum to more than 0")
    out: Tensors = {}
    for key in sorted(average):
        if not key.endswith("lora_A"):
            continue
        stem = stem_of(key)
        a = [p[f"{stem}.lora_A"] for _, p in updates] + [average[f"{stem}.lora_A"]]
        b = [p[f"{stem}.lora_B"] * (w / total) for w, p in updates] + [-average[f"{stem}.lora_B"]]
        out[f"{stem}.{DELTA_A}"] = torch.cat(a, dim=0).contiguous()
        out[f"{stem}.{DELTA_B}"] = torch.cat(b, dim=1).contiguous()
    return out


@register_strategy("fedexlora", help="FedEx-LoRA: FedLoRA's averages of A and B, plus the residual (average of B A "
                                     "minus B-bar A-bar) folded into the frozen weights: exact aggregation")
class FedExLoRA(LoraStrategy):
    STATE = ("ledger",)

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.ledger = BaseDeltaLedger()

    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        return LoraLayout.all_layers(self.lora_rank, spec.num_layers)

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        return {d: dataclasses.replace(self.task(rnd, d, self.global_layout), method=MERGED_LORA,
                                       base_delta=self.ledger.for_device(d)) for d in device_ids}

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        metrics = super().aggregate_round(rnd, results)  # A-bar, B-bar and the head: FedLoRA's FedAvg
        if results:
            factors = residual_factors([(self.weight(r), r.params) for r in results], self.global_params)
            self.ledger.add(rnd, factors)
            self.ledger.took_part([r.device_id for r in results], rnd)
            metrics["residual_rank"] = next(iter(factors.values())).shape[0] if factors else 0
        return metrics

    def evaluation_task(self) -> DeviceTask:
        return dataclasses.replace(super().evaluation_task(), method=MERGED_LORA, base_delta=self.ledger.evaluation())
