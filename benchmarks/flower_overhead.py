"""What Flower's per-message ClientApp process costs, and what a long-lived worker saves.

Runs the same LEGEND job twice on a loopback federation (SuperLink + N SuperNodes, TLS, node auth):
once with Flower's default (a fresh ClientApp process per message: import torch, load model and data every
round) and once with `legendfl flower worker` beside every node. Prints per-round set-up time (process start
to training start), training time and round time, from the runs' records.

    .venv/bin/python benchmarks/flower_overhead.py [--nodes 3] [--rounds 4] [--out runs/bench-flower]
"""
from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="runs/bench-flower")
    ns = ap.parse_args()
    rows = []
    for workers in (False, True):
        out = Path(ns.out) / ("workers" if workers else "per-message")
        t0 = time.perf_counter()
        status = run_local(None, ns.nodes, out, options=OPTIONS.format(rounds=ns.rounds), workers=workers)
        wall = time.perf_counter() - t0
        records = [json.loads(line) for line in (out / "run" / "rounds.jsonl").read_text().splitlines()]
        for rec in records:
            devs = rec["devices"].values()
            rows.append({"mode": "worker" if workers else "per-message process", "round": rec["round"],
                         "setup_s": statistics.mean(d["setup_s"] for d in devs),
                         "train_s": statistics.mean(d["train_s"] for d in devs),
                         "round_s": rec["round_time_s"], "status": status, "wall_s": wall})
    print(f"# {ns.nodes} SuperNodes on 127.0.0.1 (TLS, node auth), {platform.node()} {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| ClientApp | round | mean set-up s | mean training s | round s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['round']} | {r['setup_s']:.1f} | {r['train_s']:.1f} | {r['round_s']:.1f} |")
    for mode in ("per-message process", "worker"):
        later = [r for r in rows if r["mode"] == mode and r["round"] > 1]
        print(f"{mode}: rounds 2+: set-up {statistics.mean(r['setup_s'] for r in later):.1f} s, round "
              f"{statistics.mean(r['round_s'] for r in later):.1f} s; run {later[0]['status']}, wall {later[0]['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
