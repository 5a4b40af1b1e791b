"""Every random choice derives from (seed, purpose, round, device), never from shared global state.

A result therefore does not depend on the runtime, on the order in which devices run, or on a resume.
"""
from __future__ import annotations

import hashlib

import numpy as np

_PURPOSES = ("partition", "fleet", "batches", "dropout", "noise", "init", "probe", "fedadapter", "hetlora", "validation",
             "availability", "mergesfl")


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed for one purpose (e.g. ``"batches"``) and its keys (e.g. round, device)."""
    if purpose not in _PURPOSES:
        raise ValueError(f"purpose must be one of {_PURPOSES}, got {purpose!r}")
    text = ":".join([str(int(seed)), purpose, *(str(int(k)) for k in keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy generator for (seed, purpose, *keys)."""
    return np.random.default_rng(derive_seed(seed, purpose, *keys))
