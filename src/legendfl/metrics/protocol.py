"""The comparison protocol: targets that do not measure where runs stop, and accuracy at equal time.

The paper's rule (the target is the lowest final accuracy among the compared strategies; time to target is
the first round at or above it) puts the target where the slowest-learning strategy happens to be when
the runs are cut off, and that strategy crosses it at or next to its last round: the speed-up then
measures the cut-off. This module adds rules that do not depend on where runs stop, all from records:

- **Declared target grid** (:data:`TARGET_GRID`): every half point of accuracy, fixed before any run;
  ``comparison.over_seeds`` hands the rules below only its points above the task's chance accuracy. A
  table reports the speed-up at each grid target from ``grid_from`` up to the highest one the first
  strategy and at least one other reach (sustained, ``summary.crossing``) on every seed
  (:func:`comparable_targets`).
- **Headline target** (:func:`headline_target`): the highest grid target that every compared strategy
  reaches, sustained, **before the last quarter of its run** (its crossing at or before 75% of its run's
  time) on every seed; ``None`` if there is none, and the table says so.
- **Plateau check** (:func:`plateaued`): whether a run's last three evaluations lie within 0.5 points,
  i.e. whether it had stopped improving when it was cut off.
- **Accuracy at equal time** (:func:`equal_time`), with no target at all: each strategy's accuracy at the
  time the fastest strategy's run ends (the last evaluation at or before it), and its mean accuracy over
  the window from the moment every strategy has an evaluated model to that time (the area under the
  accuracy-vs-time step curve divided by the window's length).
"""
from __future__ import annotations

from typing import Sequence

from .records import RoundPoint, evaluated, round_points
from .summary import crossing

TARGET_GRID = tuple(round(0.005 * i, 3) for i in range(1, 200))  # 0.5%, 1.0%, ..., 99.5%
LAST_QUARTER = 0.75  # a target counts as reached early if crossed at or before this share of the run's time
PLATEAU_POINTS, PLATEAU_TOLERANCE = 3, 0.005
Run = Sequence[dict | RoundPoint]  # a run's records, or its points (records.round_points)


def run_end(records: Run) -> float:
    points = round_points(records)
    return float(points[-1].time_s) if points else 0.0


def reached_early(records: Run, target: float, share: float = LAST_QUARTER) -> bool:
    """Whether the run reaches ``target`` sustained at or before ``share`` of its run's time."""
    t = crossing(records, target)
    return t is not None and t <= share * run_end(records) + 1e-9


def headline_target(seeds: dict[int, dict[str, Run]], grid=TARGET_GRID, share: float = LAST_QUARTER) -> float | None:
    """The highest grid target every strategy reaches, sustained, before the last quarter of its run, on every seed."""
    runs = [round_points(rec) for runs in seeds.values() for rec in runs.values()]
    for target in sorted(grid, reverse=True):
        if all(reached_early(rec, target, share) for rec in runs):
            return target
    return None


def comparable_targets(seeds: dict[int, dict[str, Run]], grid=TARGET_GRID, start: float = 0.0) -> list[float]:
    """Grid targets from ``start`` up that the first strategy and at least one other reach, sustained, on every
    seed: where the first strategy's speed-up over that other is defined in every seed. The table goes on past
    a strategy that stops early, so the others are still compared above it."""
    names = list(next(iter(seeds.values()), {}))
    if not names:
        return []
    runs = {n: [evaluated(runs[n]) for runs in seeds.values()] for n in names}
    every = lambda n, t: all(crossing(rec, t) is not None for rec in runs[n])  # noqa: E731
    return [t for t in grid if t >= start - 1e-9 and every(names[0], t) and any(every(n, t) for n in names[1:])]


def plateaued(records: Run, points: int = PLATEAU_POINTS, tolerance: float = PLATEAU_TOLERANCE) -> bool:
    """Whether the last ``points`` evaluations lie within ``tolerance`` of each other."""
    acc = [float(p.accuracy) for p in evaluated(records)][-points:]
    return len(acc) == points and max(acc) - min(acc) <= tolerance + 1e-12


def accuracy_at(records: Run, time: float) -> float | None:
    """The accuracy of the last evaluation at or before ``time`` (None before the first)."""
    known = [float(p.accuracy) for p in evaluated(records) if float(p.time_s) <= time + 1e-9]
    return known[-1] if known else None


def mean_accuracy(records: Run, start: float, end: float) -> float | None:
    """Time-average of the accuracy step curve (the last evaluated model's accuracy) over [start, end]."""
    if end <= start:
        return accuracy_at(records, end)
    points = [(float(p.time_s), float(p.accuracy)) for p in evaluated(records)]
    if not points or points[0][0] > start + 1e-9:
        return None
    area, held, at = 0.0, accuracy_at(records, start), start
    for t, a in points:
        if t <= start:
            continue
        if t >= end:
            break
        area += held * (t - at)
        held, at = a, t
    area += held * (end - at)
    return area / (end - start)


def equal_time(runs: dict[str, Run]) -> dict:
    """One seed: the window [every strategy has a model, the fastest run ends] and each strategy's accuracy
    at its end and its mean accuracy over it."""
    runs = {n: round_points(rec) for n, rec in runs.items()}
    end = min(run_end(rec) for rec in runs.values())
    start = max(float(evaluated(rec)[0].time_s) for rec in runs.values())
    return {"time_s": end, "window_start_s": start,
            "accuracy": {n: accuracy_at(rec, end) for n, rec in runs.items()},
            "mean_accuracy": {n: mean_accuracy(rec, start, end) if start < end else accuracy_at(rec, end)
                              for n, rec in runs.items()}}
