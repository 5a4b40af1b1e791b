"""MergeSFL's controller (Liao et al., arXiv 2311.13348), as pure functions: batch-size regulation and the choice
of the devices whose merged features come closest to IID. Equation numbers follow the paper as transcribed in
github.com/blasterss/Splitfed-speech-classification (docs/runtime/MERGESFL_ALGORITHM1.md); the authors' public
code picks devices at random with one batch size, so it is no reference for either.

- **Batch-size regulation** (eq. 7-9): with ``cost_i = mu_i + beta_i`` (seconds per example of compute and of
  transfer), the fastest device l gets the largest batch D and every other ``b_i = max(1, floor(D cost_l /
  cost_i))``, so that one iteration takes about as long on each.
- **Feature merging** (eq. 11-13): the merged label distribution of a set S is ``phi_S = sum b_i V_i / sum b_i``;
  its distance to the reference ``phi_0`` (the unweighted mean of the eligible devices' distributions) is
  ``KL(phi_S || phi_0)``. The server's ingress budget bounds ``sum b_i`` (in examples per iteration). Among the
  feasible sets whose KL is at most a threshold the one with the most examples per iteration wins (throughput);
  where none reaches the threshold, the one with the least KL. Ties go to the set of higher fairness priority,
  ``sum over its members of (sum_j (c_j + 1)) / (c_i + 1)`` with ``c_i`` the rounds device i took part in
  (eq. 13), so that rarely chosen devices come in.

Where this departs from the paper: its joint optimisation (eq. 14, solved by Lagrange duality with an integer
refinement that is not published) is replaced by the rule above over the regulated batch sizes; its search,
a genetic algorithm whose operators are not published either, by an **exact search over every subset** up to
``EXACT_LIMIT`` eligible devices (2^16 subsets, vectorised: milliseconds), and beyond that a **greedy** search
that adds, one at a time, the device whose addition gives the lowest KL, and then takes the best prefix by the
rule above (n^2 evaluations for 80 devices, deterministic, no tuning of operators).
"""
from __future__ import annotations

import math
from itertools import product

import numpy as np

EXACT_LIMIT = 16  # eligible devices up to which every subset is scored
EPS = 1e-12  # in the logarithm only (a class a set lacks)


def regulate_batches(costs: dict[int, float], largest: int) -> dict[int, int]:
    """Eq. 7-9: the fastest device (least seconds per example) gets ``largest``, the others proportionally less."""
    if largest < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {largest}")
    if not costs:
        return {}
    fastest = min(costs.values())
    return {d: max(1, math.floor(largest * fastest / c)) if c > 0 else largest for d, c in costs.items()}


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) along the last axis (natural log); ``p`` may be a stack of distributions."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    return np.sum(np.where(p > 0, p * (np.log(p + EPS) - np.log(q + EPS)), 0.0), axis=-1)


def distribution(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    return counts / total if total > 0 else np.full(len(counts), 1.0 / len(counts))


def fairness_priority(chosen: dict[int, int], devices: list[int]) -> dict[int, float]:
    """Eq. 13: ``sum_j (c_j + 1) / (c_i + 1)`` over the eligible devices."""
    total = sum(chosen.get(d, 0) + 1 for d in devices)
    return {d: total / (chosen.get(d, 0) + 1) for d in devices}


def merged_divergence(batches: dict[int, int], histograms: dict[int, list[int]], members: list[int]) -> float:
    """KL of the merged label distribution of ``members`` to the reference of every device in ``batches`` (what
    :func:`select_devices` minimises; for the record of a set chosen otherwise, e.g. at random)."""
    devices = sorted(batches)
    dists = np.stack([distribution(histograms[d]) for d in devices])
    chosen = np.asarray([[1.0 if d in members else 0.0 for d in devices]])
    return float(_merged_kls(chosen, np.asarray([batches[d] for d in devices], dtype=float), dists, dists.mean(axis=0))[0])


def _merged_kls(members: np.ndarray, sizes: np.ndarray, dists: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """KL to ``reference`` of each candidate set's (rows of ``members``) label distribution merged by batch size."""
    return kl_divergence((members * sizes) @ dists / (members @ sizes)[:, None], reference)


def _best(members: np.ndarray, sizes: np.ndarray, kls: np.ndarray, priority: np.ndarray, threshold: float) -> int:
    """Index of the winning candidate set (rows of ``members``) by the module doc's rule."""
    examples = members @ sizes
    fair = members @ priority
    within = kls <= threshold
    if within.any():
        keys = (np.where(within, -examples, np.inf), -fair, kls)
    else:
        keys = (kls, -examples, -fair)
    return int(np.lexsort(keys[::-1])[0])


def select_devices(batches: dict[int, int], histograms: dict[int, list[int]], chosen: dict[int, int], *,
                   budget: int | None = None, max_devices: int | None = None, kl_threshold: float = 0.05) -> tuple[list[int], float]:
    """The devices to merge this round (sorted) and the KL of their merged label distribution to the reference.

    ``batches``: each eligible device's regulated batch size; ``histograms``: its label counts (every eligible
    device's); ``chosen``: how many rounds each took part in so far."""
    devices = sorted(batches)
    if not devices:
        return [], 0.0
    sizes = np.asarray([batches[d] for d in devices], dtype=float)
    dists = np.stack([distribution(histograms[d]) for d in devices])
    reference = dists.mean(axis=0)
    prio = fairness_priority(chosen, devices)
    priority = np.asarray([prio[d] for d in devices])
    limit = budget if budget is not None else math.inf
    most = max_devices if max_devices is not None else len(devices)
    if len(devices) <= EXACT_LIMIT:
        members = np.asarray(list(product((0.0, 1.0), repeat=len(devices))))[1:]  # every non-empty subset
    else:
        members = _greedy_prefixes(sizes, dists, reference, priority, limit, most)
    feasible = (members @ sizes <= limit) & (members.sum(axis=1) <= most)
    if not feasible.any():
        raise ValueError(f"the server's ingress budget ({budget} examples per iteration) fits no device (the smallest "
                         f"batch is {int(sizes.min())}); raise mergesfl.ingress_budget or lower mergesfl.max_batch_size")
    members = members[feasible]
    kls = _merged_kls(members, sizes, dists, reference)
    best = _best(members, sizes, kls, priority, kl_threshold)
    return [d for d, m in zip(devices, members[best]) if m], float(kls[best])


def _greedy_prefixes(sizes, dists, reference, priority, limit: float, most: int) -> np.ndarray:
    """The sets a greedy search passes through: each adds the feasible device giving the lowest KL (ties: the
    higher priority, then the lower id)."""
    n = len(sizes)
    current = np.zeros(n)
    prefixes = []
    while current.sum() < most:
        candidates = [i for i in range(n) if not current[i] and current @ sizes + sizes[i] <= limit]
        if not candidates:
            break
        def score(i: int) -> tuple[float, float, int]:
            trial = current.copy()
            trial[i] = 1.0
            merged = (trial * sizes) @ dists / (trial @ sizes)
            return float(kl_divergence(merged, reference)), -float(priority[i]), i
        current = current.copy()
        current[min(candidates, key=score)] = 1.0
        prefixes.append(current)
    return np.asarray(prefixes) if prefixes else np.zeros((0, n))
