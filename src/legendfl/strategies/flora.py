"""FLoRA (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank Adaptations",
NeurIPS 2024; code: github.com/ATP-1010/FederatedLLM).

1. Ranks: each device trains LoRA on every layer at its own rank r_k. The paper assigns ranks by client
   resources; here, as for HetLoRA and FlexLoRA, they follow the devices' reported speeds
   (``capacity.ranks_by_speed``), with HetLoRA's defaults (2-8).
2. Each round every device starts a fresh LoRA (A drawn as peft draws it, from (seed, round, device); B = 0) on
   frozen weights that carry every earlier round's merged update (client method ``merged-lora``).
3. Aggregation by stacking: per LoRA pair, ``A = [A_1; ...; A_n]`` and ``B = [p_1 B_1, ..., p_n B_n]`` with p_k
   proportional to the examples the device trained on (the paper: its data size), so that ``B A = sum_k p_k
   B_k A_k`` exactly, whatever the ranks. The stack is merged into the frozen weights (times the LoRA scaling)
   and the global LoRA is zero again.
4. Traffic: a device uploads its rank-r_k LoRA and the head; it downloads the stacks of the rounds since it last
   took part, of rank sum_k r_k each (they grow with the number of devices; where they would be larger than the
   dense change, the dense change: ``core/base_delta.py``), its fresh LoRA (the paper's clients draw theirs
   locally: a known overcount of (in + out) r_k numbers per module) and the head.
5. The head (not in the paper, which tunes decoders): averaged by examples, as every LoRA strategy here does.

The exported artefact is the global model with every merged stack in its weights (``merged_model/``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..core.aggregation import weighted_average
from ..core.base_delta import DELTA_A, DELTA_B, MERGED_LORA, BaseDeltaLedger, stem_of
from ..core.lora_layout import LoraLayout
from ..core.seeding import derive_seed
from ..core.strategy import DeviceResult, DeviceTask, Tensors, key_layer
from .capacity import SpeedRankedLora, SpeedRankOptions
from .registry import register_strategy


def stacked_factors(updates: list[tuple[float, Tensors]]) -> Tensors:
    """Per LoRA pair: ``delta_A = [A_1; ...; A_n]`` and ``delta_B = [p_1 B_1, ..., p_n B_n]`` (p_k the normalised
    weights), whose product is ``sum_k p_k B_k A_k``."""
    total = sum(w for w, _ in updates)
    if total <= 0:
        raise ValueError("the aggregation weights must sum to more than 0")
    stems = sorted({stem_of(k) for _, p in updates for k in p if k.endswith("lora_A")})
    out: Tensors = {}
    for stem in stems:
        pairs = [(w, p) for w, p in updates if f"{stem}.lora_A" in p]
        out[f"{stem}.{DELTA_A}"] = torch.cat([p[f"{stem}.lora_A"] for _, p in pairs], dim=0).contiguous()
        out[f"{stem}.{DELTA_B}"] = torch.cat([p[f"{stem}.lora_B"] * (w / total) for w, p in pairs], dim=1).contiguous()
    return out


@dataclass(frozen=True)
class FLoRAOptions(SpeedRankOptions):
    prefix: ClassVar[str] = "flora."


@register_strategy("flora", help="FLoRA: ranks by device speed; fresh LoRA each round, stacked (exact for any ranks) "
                                 "and merged into the frozen weights")
class FLoRA(SpeedRankedLora):
    Options = FLoRAOptions
    STATE = ("ledger",)

    def __init__(self, options: FLoRAOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.ledger = BaseDeltaLedger()

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        ranks = self.round_ranks(device_ids)
        head = {k: v.clone() for k, v in self.global_params.items() if key_layer(k) is None}
        tasks = {}
        for d, r in ranks.items():
            layout = LoraLayout.all_layers(r, self.spec.num_layers)
            fresh = self.spec.init_lora(layout, derive_seed(self.seed, "init", rnd, d))
            tasks[d] = DeviceTask(d, rnd, {**fresh, **head}, layout, MERGED_LORA, self.round_lr(rnd),
                                  base_delta=self.ledger.for_device(d))
        return tasks

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        if not results:
            return {"aggregated_devices": 0}
        self.observe(results)
        updates = [(self.weight(r), r.params) for r in results]
        stack = stacked_factors(updates)
        self.ledger.add(rnd, stack)
        self.ledger.took_part([r.device_id for r in results], rnd)
        head = weighted_average([(w, {k: v for k, v in p.items() if key_layer(k) is None}) for w, p in updates])
        lora = {k: (torch.zeros_like(v) if k.endswith("lora_B") else v) for k, v in self.global_params.items()
                if key_layer(k) is not None}  # merged: the global LoRA is zero again
        self.global_params = {**lora, **head}
        return {"aggregated_devices": len(results), "stacked_rank": next(iter(stack.values())).shape[0] if stack else 0}

    def evaluation_task(self) -> DeviceTask:
        return replace(super().evaluation_task(), method=MERGED_LORA, base_delta=self.ledger.evaluation())
