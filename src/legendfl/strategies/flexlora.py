"""FlexLoRA (Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and Client
Resources", NeurIPS 2024; official code: alibaba/FederatedScope, branch FlexLoRA, ``fed_utils/``).

1. Ranks: each device trains LoRA on every layer at its own rank r_k, matched to its resources. The paper draws
   r_k from resource types (``--aggregation random|heavy_tail|normal``); here, as for HetLoRA, ranks follow the
   devices' reported speeds (``capacity.ranks_by_speed``: the middle rank before any report, then r_max for the
   fastest down to r_min for the slowest), with HetLoRA's defaults (2-8), so that no device sends more than a
   FedLoRA device.
2. Aggregation (``model_aggregation.FlexLoRA``): per LoRA pair, the full-size update M = sum_k p_k B_k A_k with
   p_k proportional to the examples the device trained on in the round, as every strategy here weights (the
   official code: the size of its local dataset; the same wherever a device holds more than a round's
   examples). The official code scales each product by alpha / r_k; here every
   device's LoRA has the same scaling (``lora_scaling``, held equal on every rank), so the scale is common and
   drops out of the SVD.
3. Redistribution (``adaptive_peft.distribute_weight_fast``): the SVD M = U S V^T; a device of rank r gets
   B = U[:, :r] S[:r] and A = V^T[:r] (the singular values in B, as the official code puts them), so that its
   B A is the best rank-r approximation of M (Eckart-Young). The server keeps M itself as these factors at rank
   R = max(sum of the round's ranks, r_max) (capped by the matrix size): exact, since M has rank <= sum r_k, so the
   evaluated and exported global model is M, and a device's download is the first r_k of them.
4. The head (not in the paper, which tunes decoders): averaged by examples, as every LoRA strategy here does.

Traffic: a device downloads and uploads its rank-r_k factors and the head (the SVD is the server's work), so its
download equals its upload.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..core.aggregation import weighted_average
from ..core.lora_layout import LoraLayout
from ..core.strategy import DeviceResult, DeviceTask, Tensors, key_layer, lora_ranks
from .capacity import SpeedRankedLora, SpeedRankOptions
from .hetlora import truncate
from .registry import register_strategy


def full_size_update(updates: list[tuple[float, Tensors]]) -> dict[str, torch.Tensor]:
    """Per LoRA pair (by its key stem): M = sum_k w_k B_k A_k / sum_k w_k, in float64."""
    total = sum(w for w, _ in updates)
    if total <= 0:
        raise ValueError("the aggregation weights must sum to more than 0")
    out: dict[str, torch.Tensor] = {}
    for w, params in updates:
        for key, a in params.items():
            if not key.endswith("lora_A"):
                continue
            stem = key[: -len("lora_A")]
            product = params[stem + "lora_B"].double() @ a.double() * (w / total)
            out[stem] = out[stem] + product if stem in out else product
    return out


def factorize(updates: dict[str, torch.Tensor], rank: int) -> Tensors:
    """Each M as LoRA factors of rank ``min(rank, min(M.shape))`` by SVD: B = U_R S_R, A = V^T_R (float32);
    truncating them to their first r ranks (``hetlora.truncate``) gives M's best rank-r approximation."""
    out: Tensors = {}
    for stem, m in updates.items():
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        r = min(rank, s.shape[0])
        out[stem + "lora_A"] = vh[:r].float().contiguous()
        out[stem + "lora_B"] = (u[:, :r] * s[:r]).float().contiguous()
    return out


@dataclass(frozen=True)
class FlexLoRAOptions(SpeedRankOptions):
    prefix: ClassVar[str] = "flexlora."


@register_strategy("flexlora", help="FlexLoRA: ranks by device speed; the full-size average of B A, redistributed "
                                    "to each device's rank by SVD")
class FlexLoRA(SpeedRankedLora):
    Options = FlexLoRAOptions

    def current_layout(self) -> LoraLayout:
        """The global factors' layout: their rank changes with the rounds' ranks (read from the tensors, so that
        it is part of the state without being listed twice)."""
        ranks = lora_ranks(self.global_params)
        return LoraLayout.all_layers(min(ranks.values()), self.spec.num_layers)

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        ranks = self.round_ranks(device_ids)
        return {d: DeviceTask(d, rnd, truncate(self.global_params, r), LoraLayout.all_layers(r, self.spec.num_layers),
                              "lora", self.round_lr(rnd)) for d, r in ranks.items()}

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        if not results:
            return {"aggregated_devices": 0}
        self.observe(results)
        updates = [(self.weight(r), r.params) for r in results]
        rank = max(sum(max(lora_ranks(r.params).values()) for r in results), self.options.r_max)
        lora = factorize(full_size_update(updates), rank)
        head = weighted_average([(w, {k: v for k, v in p.items() if key_layer(k) is None}) for w, p in updates])
        self.global_params = {**lora, **head}
        return {"aggregated_devices": len(results), "global_rank": self.current_layout().ranks[0]}
