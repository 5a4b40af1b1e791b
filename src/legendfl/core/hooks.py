"""Typed local terms a strategy asks a device to add to its training (the strategy <-> client protocol).

A strategy puts instances in :attr:`DeviceTask.local_terms`; the client method that trains the task
implements each term it supports (``engine/local_terms.py``) and refuses any other by name. Terms travel
over Flower as JSON (``to_json`` / :func:`term_from_json`), so every term is a small frozen dataclass with a
``kind``, registered (:func:`register_term`) by the module that defines it: a strategy, a method or a plugin.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .kinds import KindRegistry


@dataclass(frozen=True)
class LocalTerm:
    """Base class: a term of the local objective, or a measurement the device makes for the strategy."""

    kind: ClassVar[str] = "term"

    def to_json(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}


_TERMS = KindRegistry("local term", unset=LocalTerm.kind)


def register_term(cls: type[LocalTerm]) -> type[LocalTerm]:
    """Class decorator: make the term ``cls`` (by its ``kind``) readable from JSON in every process that imported
    it. The strategy or method that uses a term defines and registers it (HetLoRA's ``RankTailPenalty`` is in
    ``strategies/hetlora.py``); its implementation on a live model is registered with the engine
    (``engine.local_terms.register_term_implementation``)."""
    return _TERMS.register(cls)


def term_from_json(data: dict) -> LocalTerm:
    cls, fields = _TERMS.split(data)
    return cls(**fields)
