"""Typed local terms a strategy asks a device to add to its training (the strategy <-> client protocol).

A strategy puts instances in :attr:`DeviceTask.local_terms`; the client method that trains the task
implements each term it supports (``engine/local_terms.py``) and refuses any other by name. Terms travel
over Flower as JSON (``to_json`` / :func:`term_from_json`), so every term is a small frozen dataclass
registered here by its ``kind``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class LocalTerm:
    """Base class: a term of the local objective, or a measurement the device makes for the strategy."""

    kind: ClassVar[str] = "term"

    def to_json(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RankTailPenalty(LocalTerm):
    """HetLoRA's local rank regulariser: ``strength * sum over LoRA pairs of ||A[g:]|| * ||B[:, g:]||`` with
    ``g = floor(gamma * r)``; the device also reports the tail norm before and after its local training
    (``metrics["tail_norm_start"]``, ``metrics["tail_norm"]``), from which the server decides self-pruning."""

    kind: ClassVar[str] = "rank_tail_penalty"
    gamma: float = 0.9
    strength: float = 1e-3

    def __post_init__(self) -> None:
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")


TERMS: dict[str, type[LocalTerm]] = {RankTailPenalty.kind: RankTailPenalty}


def term_from_json(data: dict) -> LocalTerm:
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in TERMS:
        raise ValueError(f"local term kind must be one of {sorted(TERMS)}, got {kind!r}")
    return TERMS[kind](**data)
