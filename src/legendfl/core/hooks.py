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


@dataclass(frozen=True)
class LocalTerm:
    """Base class: a term of the local objective, or a measurement the device makes for the strategy."""

    kind: ClassVar[str] = "term"

    def to_json(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}


_TERMS: dict[str, type[LocalTerm]] = {}


def register_term(cls: type[LocalTerm]) -> type[LocalTerm]:
    """Class decorator: make the term ``cls`` (by its ``kind``) readable from JSON in every process that imported
    it. The strategy or method that uses a term defines and registers it (HetLoRA's ``RankTailPenalty`` is in
    ``strategies/hetlora.py``); its implementation on a live model is registered with the engine
    (``engine.local_terms.register_term_implementation``)."""
    if cls.kind == LocalTerm.kind:
        raise ValueError(f"{cls.__name__} must set its own kind to be registered")
    known = _TERMS.get(cls.kind)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"local term kind {cls.kind!r} is already {known.__module__}.{known.__qualname__}")
    _TERMS[cls.kind] = cls
    return cls


def term_from_json(data: dict) -> LocalTerm:
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _TERMS:
        raise ValueError(f"local term kind must be one of {sorted(_TERMS)}, got {kind!r}")
    return _TERMS[kind](**data)
