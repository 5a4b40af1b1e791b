"""Local regularisers some strategies ask for in their task settings."""
from __future__ import annotations

import math

import torch


def lora_pairs(model: torch.nn.Module, adapter: str = "default") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) weight pairs of every peft LoRA module (A: r x in, B: out x r)."""
    pairs = []
    for module in model.modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(a, torch.nn.ModuleDict) and adapter in a:
            pairs.append((a[adapter].weight, b[adapter].weight))
    return pairs


def rank_tail_norm(pairs, gamma: float) -> torch.Tensor:
    """HetLoRA's penalty: sum over pairs of ||A[floor(gamma r):r, :]|| * ||B[:, floor(gamma r):r]||."""
    terms = []
    for a, b in pairs:
        r = a.shape[0]
        cut = math.floor(gamma * r)
        if cut < r:
            terms.append(a[cut:].norm() * b[:, cut:].norm())
    return torch.stack(terms).sum() if terms else torch.zeros(())


def make_rank_regularizer(gamma: float, strength: float):
    """A trainer regulariser: ``strength * rank_tail_norm`` over the model's LoRA pairs."""
    cache: dict[int, list] = {}

    def regularizer(model, task):
        if id(model) not in cache:
            cache[id(model)] = lora_pairs(model)
        pairs = cache[id(model)]
        return strength * rank_tail_norm(pairs, gamma)

    return regularizer
