"""Spread over seeds: means with 95% bootstrap confidence intervals.

The interval is the percentile bootstrap: resample the per-seed values with replacement (``resamples``
times, from a fixed generator so a table is reproducible), take the mean of each resample, and report the
2.5th and 97.5th percentiles of those means. A constant series has an interval of zero width. With few
seeds (3-5) the bootstrap interval is narrower than a t-interval would be; it says how much the seeds
that were run disagree, not more. Values that are missing (a strategy that never reached the target in a
seed) are left out, and the count of values used is reported with every interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # values used
    missing: int = 0  # values left out (None: e.g. target never reached)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, pattern: str = "{:.2f}", scale: float = 1.0, suffix: str = "") -> str:
        if self.n == 0:
            return "-"
        f = lambda v: pattern.format(v * scale)
        text = f"{f(self.mean)}{suffix} [{f(self.low)}, {f(self.high)}]"
        return text + (f" ({self.n}/{self.n + self.missing})" if self.missing else "")

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n, "missing": self.missing}


def bootstrap_ci(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean and percentile-bootstrap interval of ``values`` (None entries are left out and counted)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    kept = np.asarray([float(v) for v in values if v is not None], dtype=float)
    missing = sum(1 for v in values if v is None)
    if kept.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, missing)
    if np.all(kept == kept[0]):  # a constant series: its value, exactly (a float sum would round)
        value = float(kept[0])
        return Interval(value, value, value, int(kept.size), missing)
    mean = float(kept.mean())
    gen = np.random.default_rng(seed)
    means = kept[gen.integers(0, kept.size, size=(resamples, kept.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean, float(low), float(high), int(kept.size), missing)
