"""Accuracy of a profile's model before any fine-tuning, on the same seeded evaluation subset its runs report.

    .venv/bin/python benchmarks/base_accuracy.py --profile generative      # SmolLM2 on MMLU and GSM-8K

The global model before round 1 is the base model: LoRA's B starts at zero, so its adapter changes nothing.
That model is evaluated exactly as a run evaluates it (``RunContext.evaluate``), so the numbers sit next to
the profile's per-round accuracies in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import time

from legendfl.experiments.compare import load_profile
from legendfl.config import RunConfig
from legendfl.runtime.context import RunContext


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="generative")
    p.add_argument("--tasks", nargs="+", help="default: the profile's")
    args = p.parse_args()
    prof = load_profile(args.profile)
    for task in args.tasks or prof["compare"]["tasks"]:
        cfg = RunConfig.from_sources({**prof["run"], "task": task}, {"strategy": "fedlora", "out_dir": "/tmp/unused"})
        ctx = RunContext.for_simulation(cfg)
        strategy = cfg.build_strategy()
        strategy.initialize(ctx.backbone.spec, list(range(cfg.num_devices)))
        start = time.perf_counter()
        metrics = ctx.evaluate(strategy.evaluation_task())
        print(json.dumps({"task": task, "model": cfg.model, "dev_examples": len(ctx.dev), **metrics,
                          "wall_s": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
