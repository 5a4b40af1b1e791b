"""Splitting a training set over devices: IID or non-IID label skew by a Dirichlet(alpha) draw."""
from __future__ import annotations

import numpy as np

from ..core.seeding import rng


def partition(labels: list[int], num_devices: int, *, scheme: str = "dirichlet", alpha: float = 10.0,
              seed: int = 0, max_examples_per_device: int | None = None) -> list[list[int]]:
    """Indices of the examples each device holds, deterministic by seed; every device gets >= 1 example.

    ``dirichlet``: for each class, the shares of the devices are drawn from Dir(alpha * 1_n) and the class's
    examples are cut accordingly (FedNLP's label-skew partition; the paper uses alpha = 10).
    ``iid``: a random permutation cut into near-equal parts.
    ``max_examples_per_device`` (optional) keeps a deterministic random subset of each device's data.
    """
    n = len(labels)
    if num_devices <= 0:
        raise ValueError(f"num_devices must be a positive integer, got {num_devices}")
    if num_devices > n:
        raise ValueError(f"num_devices ({num_devices}) must not exceed the number of training examples ({n})")
    if scheme not in ("dirichlet", "iid"):
        raise ValueError(f"partition must be one of ('dirichlet', 'iid'), got {scheme!r}")
    gen = rng(seed, "partition")
    labels_arr = np.asarray(labels)
    if scheme == "iid":
        parts = [list(p) for p in np.array_split(gen.permutation(n), num_devices)]
    else:
        if alpha <= 0:
            raise ValueError(f"dirichlet_alpha must be > 0, got {alpha}")
        parts = [[] for _ in range(num_devices)]
        for cls in np.unique(labels_arr):
            idx = gen.permutation(np.flatnonzero(labels_arr == cls))
            shares = gen.dirichlet(np.full(num_devices, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for dev, chunk in enumerate(np.split(idx, cuts)):
                parts[dev].extend(int(i) for i in chunk)
        # every device at least one example: move one from the largest device
        for dev in range(num_devices):
            if not parts[dev]:
                donor = max(range(num_devices), key=lambda d: len(parts[d]))
                parts[dev].append(parts[donor].pop())
        parts = [sorted(p) for p in parts]
    if max_examples_per_device is not None:
        if max_examples_per_device <= 0:
            raise ValueError(f"max_examples_per_device must be > 0, got {max_examples_per_device}")
        parts = [sorted(int(i) for i in rng(seed, "partition", d).permutation(p)[:max_examples_per_device])
                 if len(p) > max_examples_per_device else p for d, p in enumerate(parts)]
    return [[int(i) for i in p] for p in parts]


def partition_stats(parts: list[list[int]], labels: list[int], num_labels: int) -> list[dict]:
    """Per-device size and label counts (printed and saved by the runtime)."""
    out = []
    for dev, p in enumerate(parts):
        counts = np.bincount(np.asarray([labels[i] for i in p], dtype=int), minlength=num_labels)
        out.append({"device": dev, "examples": len(p), "label_counts": [int(c) for c in counts]})
    return out
