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
    (``RankTailPenalty.report``), from which the server decides self-pruning."""

    kind: ClassVar[str] = "rank_tail_penalty"
    START: ClassVar[str] = "tail_norm_start"  # the device's metrics: the tail norm before local training
    END: ClassVar[str] = "tail_norm"  # and after it
    gamma: float = 0.9
    strength: float = 1e-3

    @classmethod
    def report(cls, metrics: dict) -> "RankTailReport | None":
        """What a device measured for this term, read from its result's metrics (None if it reported nothing)."""
        start, end = metrics.get(cls.START), metrics.get(cls.END)
        return None if start is None or end is None else RankTailReport(float(start), float(end))

    def __post_init__(self) -> None:
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")


@dataclass(frozen=True)
class RankTailReport:
    """A device's tail norm (``RankTailPenalty``) before and after its local training."""

    start: float
    end: float

    @property
    def shrank(self) -> bool:
        return self.end < self.start


TERMS: dict[str, type[LocalTerm]] = {RankTailPenalty.kind: RankTailPenalty}


def term_from_json(data: dict) -> LocalTerm:
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in TERMS:
        raise ValueError(f"local term kind must be one of {sorted(TERMS)}, got {kind!r}")
    return TERMS[kind](**data)
