"""Does ``legendfl profile``'s fleet entry predict a fresh measurement of this machine's cost of LoRA depth?

    .venv/bin/python benchmarks/profile_prediction.py --trials 3      # MiniLM, batch 16 x 64, rank 8, bf16

Each trial runs the profile command's measurement (``measure_profile``, 8 timed batches per depth), builds the
fleet entry's latency profile from it, and then measures depth 1 and depth L afresh on other real SST-2 batches,
alternating the depths five times and keeping the least disturbed (fastest) repetition of each. Reported per
trial: the predicted ratio depth L / depth 1, the fresh ratio, and their relative difference. Run it on an
otherwise idle machine: this is a timing claim, which is why it is a benchmark and not a test.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import tomllib

import torch

from legendfl.core.lora_layout import LoraLayout
from legendfl.data.tasks import load_task
from legendfl.fleet.profiles import LatencyProfile, device_type_entry
from legendfl.models.backbone import load_backbone
from legendfl.experiments.profiling import fixed_batches, measure_profile, time_layout
from legendfl.models.tokenized import TokenizedData


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--repetitions", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("sst2")
    backbone = load_backbone(args.model, task.num_labels, 0)
    data = TokenizedData(backbone.tokenizer, task.train[:2000], 64)
    L = backbone.num_layers
    for trial in range(args.trials):
        start = time.perf_counter()
        m = measure_profile(backbone, data, 16, 64, 8, args.batches, seed=trial)
        # the profile as a user gets it: the entry `legendfl profile` writes, read back as a fleet file reads it
        entry = tomllib.loads(device_type_entry("this machine", m))["device_types"][0]["profile"]
        profile = LatencyProfile.from_table(entry, "profile")
        predicted = profile.batch_ms(L, L) / profile.batch_ms(1, L)
        batches = fixed_batches(data, 16, 64, 7, seed=1000 + trial)
        times = {1: [], L: []}
        for _ in range(args.repetitions):
            for k in (1, L):
                times[k].append(time_layout(backbone, LoraLayout.top(k, [8] * L), batches)["step_ms"])
        fresh = min(times[L]) / min(times[1])
        print(json.dumps({"trial": trial, "model": args.model, "machine": f"{platform.machine()}, {args.threads} threads",
                          "profile_measured_ratio": round(m["by_depth_ms"][L] / m["by_depth_ms"][1], 3),
                          "predicted_ratio": round(predicted, 3), "fresh_ratio": round(fresh, 3),
                          "relative_difference": round(predicted / fresh - 1, 3),
                          "fresh_ms": {k: [round(t, 1) for t in v] for k, v in times.items()},
                          "wall_s": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
