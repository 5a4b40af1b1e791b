"""Run several strategies on the same task, seed, partition and fleet trace, then tabulate and plot.

    .venv/bin/python benchmarks/compare.py --strategies legend fedlora --out benchmarks/results/legend_vs_fedlora

Every strategy sees the same device modes and bandwidth draws in the same round (the fleet's state is a
function of (seed, round, device)). Strategies whose ``summary.json`` exists are not re-run. The common
target is the paper's rule: the lowest final accuracy among the compared strategies (or --target).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from legendfl.config import RunConfig, load_config_file
from legendfl.metrics.plots import plot_accuracy_vs_time, plot_traffic_vs_accuracy
from legendfl.metrics.summary import read_records, summarize


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", nargs="+", default=["legend", "fedlora"])
    ap.add_argument("--config", default="configs/default.toml")
    ap.add_argument("--out", default="benchmarks/results/legend_vs_fedlora")
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides key=value")
    ns = ap.parse_args()
    base = load_config_file(ns.config)
    for item in ns.set:
        key, _, value = item.partition("=")
        kind = type(getattr(RunConfig(), key))
        base[key] = kind(value) if kind in (int, float, str) else json.loads(value)
    out = Path(ns.out)
    runs = {}
    for name in ns.strategies:
        folder = out / name
        if not (folder / "summary.json").exists():
            from legendfl.runner import run

            cfg = RunConfig(**{**base, "strategy": name, "out_dir": str(folder)})
            run(cfg, progress=lambda line: print(line, flush=True))
        runs[name] = read_records(folder / "rounds.jsonl")
    finals = {n: [r for r in rec if r["accuracy"] is not None][-1]["accuracy"] for n, rec in runs.items()}
    target = ns.target if ns.target is not None else min(finals.values())
    rows = {n: summarize(rec, target) for n, rec in runs.items()}
    first = ns.strategies[0]
    lines = [f"target accuracy {100 * target:.2f}% (lowest final accuracy among the compared strategies)"
             if ns.target is None else f"target accuracy {100 * target:.2f}% (given)", "",
             "| strategy | final acc | time to target (s) | speed-up of " + first + " | traffic to target (MB) | traffic reduction | mean waiting (s) | waiting reduction |",
             "|---|---|---|---|---|---|---|---|"]
    f = rows[first]
    for n, s in rows.items():
        t, tr = s["time_to_target_s"], s["traffic_to_target_bytes"]
        speed = f"{t / f['time_to_target_s']:.2f}x" if t and f["time_to_target_s"] else "-"
        red = f"{100 * (1 - f['traffic_to_target_bytes'] / tr):.1f}%" if tr and f["traffic_to_target_bytes"] else "-"
        wred = f"{100 * (1 - f['mean_waiting_s'] / s['mean_waiting_s']):.1f}%" if s["mean_waiting_s"] else "-"
        lines.append(f"| {n} | {100 * s['final_accuracy']:.2f}% | {t:.1f} | {speed} | {tr / 1e6:.1f} | {red} | "
                     f"{s['mean_waiting_s']:.2f} | {wred} |" if t else
                     f"| {n} | {100 * s['final_accuracy']:.2f}% | not reached | - | - | - | {s['mean_waiting_s']:.2f} | {wred} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    plot_accuracy_vs_time(runs, out / "accuracy_vs_time.png", target)
    plot_traffic_vs_accuracy(runs, out / "traffic_vs_accuracy.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
