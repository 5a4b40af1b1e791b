"""Numbers for BENCHMARKS.md beyond compare's tables, from the records of `benchmarks/seeds.sh`.

Per cost model, over seeds (mean [95% bootstrap CI]):
- per-round gain of LEGEND's slowest device over FedLoRA's: FedLoRA's mean round time / LEGEND's (a
  round lasts as long as its slowest device, so this is the slowest devices' gain);
- where the slowest device's round goes (forward, backward, transfers), for LEGEND and FedLoRA;
- LEGEND's depths (mean over devices and rounds 2+) and its mean round time under each LCD variant.

Usage: .venv/bin/python benchmarks/seeds_report.py [benchmarks/results/seeds/sst2]
"""
from __future__ import annotations

import sys
from pathlib import Path

from legendfl.metrics.stats import bootstrap_ci
from legendfl.metrics.summary import read_records


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def slowest_shares(records):
    parts = {"forward_s": [], "backward_s": [], "transfer": []}
    for rec in records:
        d = max(rec["devices"].values(), key=lambda v: v["total_s"])
        parts["forward_s"].append(d["forward_s"] / d["total_s"])
        parts["backward_s"].append(d["backward_s"] / d["total_s"])
        parts["transfer"].append((d["download_s"] + d["upload_s"]) / d["total_s"])
    return {k: mean(v) for k, v in parts.items()}


def main(root: Path) -> None:
    for cost in ("profile", "flops"):
        seeds = sorted(root.glob(f"{cost}/seed-*"))
        if not seeds:
            continue
        runs = {s.name: {n.name: read_records(n / "rounds.jsonl") for n in s.iterdir() if (n / "rounds.jsonl").exists()}
                for s in seeds}
        print(f"## cost model {cost}: {len(seeds)} seeds")
        have = [r for r in runs.values() if "legend" in r and "fedlora" in r]
        gain = [mean(x["round_time_s"] for x in r["fedlora"]) / mean(x["round_time_s"] for x in r["legend"]) for r in have]
        print(f"per-round gain of LEGEND's slowest device over FedLoRA's (mean round time ratio): "
              f"{bootstrap_ci(gain).format('{:.2f}', suffix='x')}")
        for name in ("legend", "legend-literal", "legend-no-rank", "fedlora", "legend-no-depth", "hetlora", "fedadapter"):
            rs = [r[name] for r in runs.values() if name in r]
            if not rs:
                continue
            shares = [slowest_shares(r) for r in rs]
            depth = [mean(d.get("depth", 0) for x in r[1:] for d in x["devices"].values()) for r in rs]
            print(f"{name}: mean round time {bootstrap_ci([mean(x['round_time_s'] for x in r) for r in rs]).format('{:.2f}')} s; "
                  f"slowest device's round: forward {bootstrap_ci([s['forward_s'] for s in shares]).format('{:.0f}', 100, '%')}, "
                  f"backward {bootstrap_ci([s['backward_s'] for s in shares]).format('{:.0f}', 100, '%')}, "
                  f"transfers {bootstrap_ci([s['transfer'] for s in shares]).format('{:.0f}', 100, '%')}; "
                  f"mean depth (rounds 2+) {bootstrap_ci(depth).format('{:.2f}')}")
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/seeds/sst2"))
