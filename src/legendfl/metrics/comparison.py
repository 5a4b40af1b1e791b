"""Comparisons of strategies over seeds, from records alone: per-seed values, then mean and 95% CI.

In each seed the target is the paper's rule (the lowest final accuracy among the compared strategies in
that seed) unless a target is given. Per strategy and seed: final accuracy; time and traffic to target by
the sustained, interpolated rule and by the paper's first-touch rule (``summary.crossing``); mean waiting
time over all rounds; mean round time. Ratios against the first strategy S are computed per seed, then
averaged: speed-up = time_X / time_S, traffic reduction = 1 - traffic_S / traffic_X, waiting reduction =
1 - waiting_S / waiting_X. Intervals: ``stats.bootstrap_ci`` over seeds.
"""
from __future__ import annotations

from .stats import Interval, bootstrap_ci
from .summary import crossing, summarize

VALUES = ("final_accuracy", "time_sustained_s", "time_first_s", "traffic_sustained_bytes", "traffic_first_bytes",
          "mean_waiting_s", "mean_round_time_s")
RATIOS = ("speedup_sustained", "speedup_first", "traffic_reduction", "waiting_reduction")


def final_accuracy(records: list[dict]) -> float:
    return [r for r in records if r["accuracy"] is not None][-1]["accuracy"]


def _ratio(x: float | None, ref: float | None) -> float | None:
    return x / ref if x is not None and ref else None


def seed_values(runs: dict[str, list[dict]], target: float | None = None) -> tuple[float, dict[str, dict]]:
    """One seed: the target and, per strategy, its values and its ratios against the first strategy."""
    if not runs:
        raise ValueError("runs must not be empty")
    if target is None:
        target = min(final_accuracy(rec) for rec in runs.values())
    out: dict[str, dict] = {}
    for name, rec in runs.items():
        s = summarize(rec, target)
        out[name] = {"final_accuracy": s["final_accuracy"], "time_sustained_s": s["time_to_target_sustained_s"],
                     "time_first_s": s["time_to_target_s"], "traffic_sustained_bytes": s["traffic_to_target_sustained_bytes"],
                     "traffic_first_bytes": s["traffic_to_target_bytes"], "mean_waiting_s": s["mean_waiting_s"],
                     "mean_round_time_s": s["mean_round_time_s"]}
    ref = out[next(iter(runs))]
    for v in out.values():
        v["speedup_sustained"] = _ratio(v["time_sustained_s"], ref["time_sustained_s"])
        v["speedup_first"] = _ratio(v["time_first_s"], ref["time_first_s"])
        tr = _ratio(ref["traffic_sustained_bytes"], v["traffic_sustained_bytes"])
        v["traffic_reduction"] = None if tr is None else 1 - tr
        w = _ratio(ref["mean_waiting_s"], v["mean_waiting_s"])
        v["waiting_reduction"] = None if w is None else 1 - w
    return target, out


def over_seeds(seeds: dict[int, dict[str, list[dict]]], target: float | None = None) -> dict:
    """Per-seed tables and, per strategy and metric, the mean with its 95% bootstrap interval."""
    per_seed = {seed: seed_values(runs, target) for seed, runs in seeds.items()}
    names = list(next(iter(seeds.values())))
    intervals = {name: {m: bootstrap_ci([per_seed[s][1][name][m] for s in per_seed]) for m in VALUES + RATIOS}
                 for name in names}
    return {"targets": {s: t for s, (t, _) in per_seed.items()}, "per_seed": {s: v for s, (_, v) in per_seed.items()},
            "intervals": intervals, "reference": names[0], "seeds": list(seeds)}


def markdown(result: dict, title: str = "") -> str:
    """The table a reader wants: means with [95% CI] over seeds, ratios against the first strategy."""
    ref, iv = result["reference"], result["intervals"]
    targets = ", ".join(f"seed {s}: {100 * t:.2f}%" for s, t in result["targets"].items())
    lines = [f"{title}{len(result['seeds'])} seeds; target per seed (lowest final accuracy unless set): {targets}", "",
             "Means over seeds with [95% bootstrap CI]; (k/n) where only k of n seeds reached the target.", "",
             f"| strategy | final accuracy (%) | time to target, sustained (s) | speed-up of {ref}, sustained | "
             f"speed-up of {ref}, first touch | traffic to target (MB) | traffic reduction by {ref} | "
             f"mean waiting (s) | waiting reduction by {ref} |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in iv.items():
        lines.append(" | ".join([
            f"| {name}", m["final_accuracy"].format("{:.2f}", 100), m["time_sustained_s"].format("{:.1f}"),
            m["speedup_sustained"].format("{:.2f}", suffix="x"), m["speedup_first"].format("{:.2f}", suffix="x"),
            m["traffic_sustained_bytes"].format("{:.1f}", 1e-6), m["traffic_reduction"].format("{:.1f}", 100, "%"),
            m["mean_waiting_s"].format("{:.2f}"), m["waiting_reduction"].format("{:.1f}", 100, "%")]) + " |")
    return "\n".join(lines) + "\n"


def to_json(result: dict) -> dict:
    return {**result, "intervals": {n: {k: v.to_json() for k, v in m.items()} for n, m in result["intervals"].items()}}


def speedup_curve(seeds: dict[int, dict[str, list[dict]]], targets: list[float]) -> dict[str, list[tuple[float, Interval]]]:
    """The first strategy's sustained speed-up over each other one, as a function of the target accuracy."""
    names = list(next(iter(seeds.values())))
    ref = names[0]
    curves: dict[str, list[tuple[float, Interval]]] = {n: [] for n in names[1:]}
    for target in targets:
        times = {s: {n: crossing(runs[n], target) for n in names} for s, runs in seeds.items()}
        for n in names[1:]:
            curves[n].append((target, bootstrap_ci([_ratio(times[s][n], times[s][ref]) for s in seeds])))
    return curves
