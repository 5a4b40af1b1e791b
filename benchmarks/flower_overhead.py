"""What Flower's per-message ClientApp process costs, and what a long-lived worker and a forking SuperExec save.

Runs the same LEGEND job four times on a loopback federation (SuperLink + N SuperNodes, TLS, node auth): with
Flower's default (a fresh ClientApp process per message: import torch, load model and data every round), with
`legendfl flower worker` beside every node, and each again with `legendfl flower superexec` (every ServerApp and
ClientApp process forked from one that imported Flower, legendfl and torch once). Prints per-round set-up time
(process start to training start), training time and round time, from the runs' records, and each whole run's
wall time and CPU (all processes of the machine, from /proc/stat: Linux, and nothing else should run).

    .venv/bin/python benchmarks/flower_overhead.py [--nodes 3] [--rounds 4] [--out runs/bench-flower]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from legendfl.runtime.flower.local import run_local

OPTIONS = """task = "sst2"
strategy = "legend"
rounds = {rounds}
max_examples_per_device = 128
max_dev_examples = 128
max_length = 64
batch_size = 16
max_local_steps = 4
lr = 2e-3
threads = 1
"""


def busy_core_s() -> float:
    """CPU seconds this machine has spent busy since boot (all processes), from /proc/stat."""
    with open("/proc/stat") as fh:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fh.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


MODES = [("per-message process", False, "flower"), ("worker", True, "flower"),
         ("per-message process, forked", False, "fork"), ("worker, forked", True, "fork")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="runs/bench-flower")
    ns = ap.parse_args()
    rows = []
    runs = {}
    for mode, workers, superexec in MODES:
        out = Path(ns.out) / mode.replace(", ", "-").replace(" ", "-")
        t0, cpu0 = time.perf_counter(), busy_core_s()
        status = run_local(None, ns.nodes, out, options=OPTIONS.format(rounds=ns.rounds), workers=workers,
                           superexec=superexec)
        wall = time.perf_counter() - t0
        runs[mode] = (status, wall, busy_core_s() - cpu0)
        records = [json.loads(line) for line in (out / "run" / "rounds.jsonl").read_text().splitlines()]
        for rec in records:
            devs = rec["devices"].values()
            rows.append({"mode": mode, "round": rec["round"],
                         "setup_s": statistics.mean(d["setup_s"] for d in devs),
                         "train_s": statistics.mean(d["train_s"] for d in devs),
                         "round_s": rec["round_time_s"]})
    print(f"# {ns.nodes} SuperNodes on 127.0.0.1 (TLS, node auth), {platform.node()} {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| ClientApp | round | mean set-up s | mean training s | round s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['round']} | {r['setup_s']:.1f} | {r['train_s']:.1f} | {r['round_s']:.1f} |")
    print("\n| ClientApp | rounds 2+: mean set-up s | rounds 2+: mean round s | whole run: wall s | whole run: CPU core-s | status |")
    print("|---|---|---|---|---|---|")
    for mode, _, _ in MODES:
        later = [r for r in rows if r["mode"] == mode and r["round"] > 1]
        status, wall, cpu = runs[mode]
        print(f"| {mode} | {statistics.mean(r['setup_s'] for r in later):.1f} | {statistics.mean(r['round_s'] for r in later):.1f} "
              f"| {wall:.0f} | {cpu:.0f} | {status} |")


if __name__ == "__main__":
    main()
