"""Implementations of typed local terms (``core.hooks``) on a live model, registered by the term's kind.

Each implementation has ``start(model, metrics)`` (before local training), ``penalty(model)`` (added to
every step's loss) and ``finish(model, metrics)`` (after), and declares the client methods it works with
(``methods``) and whether the batched engine can carry it (``batched``). A client method that cannot carry a
term refuses it by name. This module implements the LoRA rank-tail penalty (HetLoRA's ``RankTailPenalty``,
defined in ``strategies/hetlora.py``: kind ``rank_tail_penalty``) and registers the group importance of
``engine/group_importance.py`` (kind ``group_importance``); a plugin registers its own term's
implementation with :func:`register_term_implementation`.
"""
from __future__ import annotations

import math

import torch

from ..core.hooks import LocalTerm
from .group_importance import GroupImportanceTerm


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


class RankTailTerm:
    """HetLoRA's rank-tail penalty (a term with ``gamma``, ``strength`` and the metric names ``START`` and ``END``)
    on a peft LoRA model."""

    methods = ("lora",)  # the client methods it works with
    batched = True  # also in the batched engine (``bind`` takes the engine's own LoRA pairs)

    def __init__(self, term: LocalTerm) -> None:
        self.term = term
        self.pairs: list | None = None

    def bind(self, pairs: list) -> "RankTailTerm":
        """Use these (A, B) pairs instead of finding peft's in the model (the batched engine's own)."""
        self.pairs = list(pairs)
        return self

    def _pairs(self, model: torch.nn.Module) -> list:
        if self.pairs is None:
            self.pairs = lora_pairs(model)
        return self.pairs

    def start(self, model: torch.nn.Module, metrics: dict) -> None:
        with torch.no_grad():
            metrics[self.term.START] = float(rank_tail_norm(self._pairs(model), self.term.gamma))

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        return self.term.strength * rank_tail_norm(self._pairs(model), self.term.gamma)

    def finish(self, model: torch.nn.Module, metrics: dict) -> None:
        with torch.no_grad():
            metrics[self.term.END] = float(rank_tail_norm(self._pairs(model), self.term.gamma))


_IMPLEMENTATIONS: dict[str, type] = {}


def register_term_implementation(kind: str, implementation: type) -> None:
    """``implementation(term)`` carries the terms of this kind (see the module doc for what it must provide)."""
    for attribute in ("methods", "start", "penalty", "finish"):
        if not hasattr(implementation, attribute):
            raise ValueError(f"the implementation of local term {kind!r} lacks {attribute!r}")
    _IMPLEMENTATIONS[kind] = implementation


register_term_implementation("rank_tail_penalty", RankTailTerm)
register_term_implementation("group_importance", GroupImportanceTerm)  # strategies.structure_mask.GroupImportance


def implement(term: LocalTerm, method: str):
    impl = _IMPLEMENTATIONS.get(term.kind)
    if impl is None or method not in impl.methods:
        raise ValueError(f"local term {term.kind!r} is not supported by client method {method!r}")
    return impl(term)


def batched_support(term: LocalTerm) -> bool:
    """Whether the batched engine carries ``term`` (its implementation says so)."""
    impl = _IMPLEMENTATIONS.get(term.kind)
    return impl is not None and getattr(impl, "batched", False)
