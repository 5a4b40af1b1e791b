"""Comparisons of strategies, from records alone: every table ``compare`` writes.

One seed by the paper's rule (:func:`compare_records`, :func:`table_markdown`, :func:`write_csv`), and over
seeds by the protocol of ``metrics.protocol`` (:func:`over_seeds`, :func:`markdown`), described below.

Per seed and strategy: final accuracy; accuracy at equal time and mean accuracy over the equal-time window
(no target); time and traffic to the **headline target** (sustained, interpolated crossing; the target is
declared by the grid rule of ``protocol.headline_target`` unless given); time to target by **the paper's
rule** (the lowest final accuracy of that seed, first touch), kept for comparison with the paper's
figures; mean waiting and round time; whether the run had plateaued. Ratios against the first strategy S
are paired by seed: speed-up = time_X / time_S, traffic ratio = traffic_X / traffic_S (reduction by S =
1 - 1 / ratio), waiting ratio likewise; summarised on the log scale (``stats.ratio_interval``). Values are
summarised by ``stats.t_interval``. With fewer than 5 seeds both are ranges, and the tables say so.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from . import protocol
from .protocol import Run
from .records import evaluated, round_points
from .stats import MIN_SEEDS_FOR_CI, Interval, ratio_interval, t_interval
from .summary import crossing, summarize

VALUES = ("final_accuracy", "accuracy_equal_time", "mean_accuracy_equal_time", "time_headline_s",
          "traffic_headline_bytes", "time_paper_s", "mean_waiting_s", "mean_round_time_s")
RATIOS = ("speedup_headline", "speedup_paper", "traffic_ratio", "waiting_ratio")


def final_accuracy(records: Run) -> float:
    return evaluated(records)[-1].accuracy


def _ratio(x: float | None, ref: float | None) -> float | None:
    return x / ref if x is not None and ref else None


def paper_target(runs: dict[str, Run]) -> float:
    """The paper's rule: the lowest final accuracy among the compared strategies."""
    return min(final_accuracy(rec) for rec in runs.values())


def seed_values(runs: dict[str, Run], headline: float | None, target: float | None = None) -> dict:
    """One seed: the paper's target and, per strategy, its values and its ratios against the first strategy."""
    if not runs:
        raise ValueError("runs must not be empty")
    runs = {name: round_points(rec) for name, rec in runs.items()}
    paper = paper_target(runs) if target is None else target
    equal = protocol.equal_time(runs)
    out: dict[str, dict] = {}
    for name, rec in runs.items():
        ev = evaluated(rec)
        out[name] = {
            "final_accuracy": final_accuracy(rec),
            "accuracy_equal_time": equal["accuracy"][name],
            "mean_accuracy_equal_time": equal["mean_accuracy"][name],
            "time_headline_s": crossing(ev, headline) if headline is not None else None,
            "traffic_headline_bytes": crossing(ev, headline, "traffic") if headline is not None else None,
            "time_paper_s": crossing(ev, paper, rule="first"),
            "mean_waiting_s": sum(p.mean_waiting_s for p in rec) / len(rec),
            "mean_round_time_s": sum(p.round_time_s for p in rec) / len(rec),
            "plateaued": protocol.plateaued(rec),
        }
    ref = out[next(iter(runs))]
    for v in out.values():
        v["speedup_headline"] = _ratio(v["time_headline_s"], ref["time_headline_s"])
        v["speedup_paper"] = _ratio(v["time_paper_s"], ref["time_paper_s"])
        v["traffic_ratio"] = _ratio(v["traffic_headline_bytes"], ref["traffic_headline_bytes"])
        v["waiting_ratio"] = _ratio(v["mean_waiting_s"], ref["mean_waiting_s"])
    return {"paper_target": paper, "equal_time_s": equal["time_s"], "window_start_s": equal["window_start_s"],
            "strategies": out}


def speedup_curve(seeds: dict[int, dict[str, Run]], targets: list[float]) -> dict[str, list[tuple[float, Interval]]]:
    """The first strategy's sustained speed-up over each other one, per target (paired log-ratio intervals)."""
    names = list(next(iter(seeds.values())))
    ref = names[0]
    curves: dict[str, list[tuple[float, Interval]]] = {n: [] for n in names[1:]}
    points = {s: {n: evaluated(runs[n]) for n in names} for s, runs in seeds.items()}
    for target in targets:
        times = {s: {n: crossing(points[s][n], target) for n in names} for s in seeds}
        for n in names[1:]:
            curves[n].append((target, ratio_interval([_ratio(times[s][n], times[s][ref]) for s in seeds])))
    return curves


def over_seeds(seeds: dict[int, dict[str, Run]], target: float | None = None, grid_from: float = 0.75,
               chance: float = 0.0) -> dict:
    """Per-seed values and, per strategy and metric, the summary over seeds; ``target`` (if given) is the
    declared headline target and the paper's target alike, else each follows its rule. Grid targets (the
    headline's and the grid table's) lie above ``chance``, the task's chance accuracy: reaching a target at
    or below it measures nothing."""
    seeds = {s: {n: round_points(rec) for n, rec in runs.items()} for s, runs in seeds.items()}
    above = [t for t in protocol.TARGET_GRID if t > chance + 1e-9]
    headline = target if target is not None else protocol.headline_target(seeds, above)
    per_seed = {s: seed_values(runs, headline, target) for s, runs in seeds.items()}
    names = list(next(iter(seeds.values())))
    column = lambda name, m: [per_seed[s]["strategies"][name][m] for s in per_seed]  # noqa: E731
    intervals = {name: {**{m: t_interval(column(name, m)) for m in VALUES},
                        **{m: ratio_interval(column(name, m)) for m in RATIOS}} for name in names}
    plateaus = {name: sum(bool(v) for v in column(name, "plateaued")) for name in names}
    grid = protocol.comparable_targets(seeds, above, start=grid_from)
    early = {t: all(protocol.reached_early(rec, t) for runs in seeds.values() for rec in runs.values()) for t in grid}
    return {"headline_target": headline, "headline_rule": "declared" if target is not None else "grid", "chance": chance,
            "per_seed": per_seed, "intervals": intervals, "plateaued": plateaus, "reference": names[0],
            "seeds": list(seeds), "grid": grid, "grid_early": early, "grid_speedups": speedup_curve(seeds, grid)}


@dataclass
class ComparisonRow:
    strategy: str
    final_accuracy: float
    time_to_target_s: float | None
    traffic_to_target_bytes: int | None
    mean_waiting_s: float
    speedup: float | None  # of the first strategy over this one
    traffic_reduction: float | None
    waiting_reduction: float | None


def compare_records(runs: dict[str, list[dict]], target: float | None = None) -> tuple[float, list[ComparisonRow]]:
    """One seed's table by the paper's rule (target: the lowest final accuracy unless given; the first strategy is
    the reference): speed-up = time_X / time_S, traffic reduction = 1 - traffic_S / traffic_X, waiting
    reduction = 1 - waiting_S / waiting_X (mean waiting over all rounds)."""
    if not runs:
        raise ValueError("runs must not be empty")
    if target is None:
        target = paper_target(runs)
    summaries = {n: summarize(rec, target) for n, rec in runs.items()}
    ref = summaries[next(iter(runs))]
    rows = []
    for name, s in summaries.items():
        t, tr, w = s["time_to_target_s"], s["traffic_to_target_bytes"], s["mean_waiting_s"]
        rt, rtr, rw = ref["time_to_target_s"], ref["traffic_to_target_bytes"], ref["mean_waiting_s"]
        rows.append(ComparisonRow(
            name, s["final_accuracy"], t, tr, w,
            speedup=t / rt if t and rt else None,
            traffic_reduction=1 - rtr / tr if tr and rtr else None,
            waiting_reduction=1 - rw / w if w else None))
    return target, rows


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def table_markdown(target: float, rows: list[ComparisonRow], title: str = "") -> str:
    ref = rows[0].strategy
    lines = [f"{title}target accuracy {100 * target:.2f}%", "",
             f"| strategy | final accuracy | time to target (s) | speed-up of {ref} | traffic to target (MB) | "
             f"traffic reduction by {ref} | mean waiting (s) | waiting reduction by {ref} |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.strategy} | {100 * r.final_accuracy:.2f}% | {_fmt(r.time_to_target_s, '{:.1f}')} | "
                     f"{_fmt(r.speedup, '{:.2f}x')} | {_fmt(r.traffic_to_target_bytes and r.traffic_to_target_bytes / 1e6, '{:.1f}')} | "
                     f"{_fmt(r.traffic_reduction and 100 * r.traffic_reduction, '{:.1f}%')} | {r.mean_waiting_s:.2f} | "
                     f"{_fmt(r.waiting_reduction and 100 * r.waiting_reduction, '{:.1f}%')} |")
    return "\n".join(lines) + "\n"


def write_csv(target: float, rows: list[ComparisonRow], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "target_accuracy", "final_accuracy", "time_to_target_s", "speedup",
                    "traffic_to_target_bytes", "traffic_reduction", "mean_waiting_s", "waiting_reduction"])
        for r in rows:
            w.writerow([r.strategy, target, r.final_accuracy, r.time_to_target_s, r.speedup,
                        r.traffic_to_target_bytes, r.traffic_reduction, r.mean_waiting_s, r.waiting_reduction])


def _interval_note(seeds: list[int]) -> str:
    """How the table's intervals were made, naming the seeds (a table written by one seed's run says which)."""
    n, which = len(seeds), ", ".join(map(str, seeds))
    if n >= MIN_SEEDS_FOR_CI:
        return (f"mean [95% Student-t interval] over n = {n} seeds ({which}); ratios paired by seed, geometric mean "
                "and t interval on the log scale")
    return (f"mean [range] over n = {n} seeds ({which}; fewer than {MIN_SEEDS_FOR_CI}: the seeds' range, not a "
            "confidence interval); ratios paired by seed, geometric mean")


def _grid_cell(iv: Interval) -> str:
    """A speed-up over seeds, or where the other strategy misses the target in some seed, how many it reaches
    (a ratio over the seeds that happen to reach it would select them)."""
    return f"not reached ({iv.n}/{iv.n + iv.missing})" if iv.missing else iv.format("{:.2f}", suffix="x")


def markdown(result: dict, title: str = "") -> str:
    """The headline table and the grid table (see the module doc)."""
    ref, iv, n = result["reference"], result["intervals"], len(result["seeds"])
    head = result["headline_target"]
    rule = ("declared with --target" if result["headline_rule"] == "declared" else
            "the highest target on the 0.5-point grid that every strategy reaches, sustained, before the last quarter "
            "of its run, in every seed" + (f"; grid targets lie above chance, {100 * result['chance']:.1f}%"
                                           if result.get("chance") else ""))
    paper = ", ".join(f"seed {s}: {100 * v['paper_target']:.2f}%" for s, v in result["per_seed"].items())
    equal = ", ".join(f"seed {s}: {v['equal_time_s']:.1f} s" for s, v in result["per_seed"].items())
    lines = [f"{title}{_interval_note(result['seeds'])}.", "",
             f"Headline target: {'none' if head is None else f'{100 * head:.1f}%'} ({rule}). "
             f"Paper's rule (lowest final accuracy, first touch), per seed: {paper}. "
             f"Equal time (the fastest run's end), per seed: {equal}. (k/n): only k of n seeds give a value.", "",
             f"| strategy | final accuracy (%) | accuracy at equal time (%) | mean accuracy, equal-time window (%) | "
             f"time to headline target (s) | speed-up of {ref}, headline target | speed-up of {ref}, paper's rule | "
             f"traffic to headline target (MB) | traffic reduction by {ref} | mean waiting (s) | waiting reduction by {ref} | "
             f"plateaued (last 3 evaluations within 0.5 points) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    reduction = lambda r: 1 - 1 / r  # noqa: E731
    for name, m in iv.items():
        lines.append(" | ".join([
            f"| {name}", m["final_accuracy"].format("{:.2f}", 100), m["accuracy_equal_time"].format("{:.2f}", 100),
            m["mean_accuracy_equal_time"].format("{:.2f}", 100), m["time_headline_s"].format("{:.1f}"),
            m["speedup_headline"].format("{:.2f}", suffix="x"), m["speedup_paper"].format("{:.2f}", suffix="x"),
            m["traffic_headline_bytes"].format("{:.1f}", 1e-6),
            m["traffic_ratio"].map(reduction).format("{:.1f}", 100, "%") if m["traffic_ratio"].n else "-",
            m["mean_waiting_s"].format("{:.2f}"),
            m["waiting_ratio"].map(reduction).format("{:.1f}", 100, "%") if m["waiting_ratio"].n else "-",
            f"{result['plateaued'][name]}/{n}"]) + " |")
    others = list(result["grid_speedups"])
    if result["grid"] and others:
        lines += ["", f"Speed-up of {ref} (sustained crossing) at every grid target that {ref} and at least one other "
                      "strategy reach in every seed; \"not reached (k/n)\": that strategy reaches it in only k of n seeds, "
                      "so no ratio is shown; * = every strategy reaches it before the last quarter of every run (eligible "
                      "as headline):", "",
                  "| target | " + " | ".join(f"over {o}" for o in others) + " |", "|---|" + "---|" * len(others)]
        for i, t in enumerate(result["grid"]):
            cells = [_grid_cell(result["grid_speedups"][o][i][1]) for o in others]
            lines.append(f"| {100 * t:.1f}%{'*' if result['grid_early'][t] else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in ("intervals", "grid_speedups", "grid_early")}
    out["intervals"] = {n: {k: v.to_json() for k, v in m.items()} for n, m in result["intervals"].items()}
    out["grid_early"] = {str(t): v for t, v in result["grid_early"].items()}
    out["grid_speedups"] = {n: [{"target": t, **iv.to_json()} for t, iv in pts] for n, pts in result["grid_speedups"].items()}
    return out
