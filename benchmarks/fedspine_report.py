"""Issue 23's tables from the runs of benchmarks/fedspine.sh, from records and the saved models alone.

    .venv/bin/python benchmarks/fedspine_report.py [--latency]

Prints, and writes to benchmarks/results/fedspine/report.md:
1. per target sparsity, FedSpine against LEGEND and FedLoRA (dense, the headline runs) over the seeds where all
   three finished: time to target, traffic, waiting, accuracy at equal time (metrics/comparison.py, FedSpine the
   reference: its speed-up over each);
2. at equal sparsity: FedSpine's final model (pruned while tuned) against LEGEND's and FedLoRA's pruned once
   after training by the same importance rule (``legendfl prune``), and their dense models: accuracy, parameters,
   model size, and (with ``--latency``, on an otherwise idle machine) CPU inference latency, measured here
   with plain transformers and cached in latency.json.
A seed is used only where every model of a row exists; n is shown, and intervals under 5 seeds are ranges.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from headline_report import load, table

from legendfl.metrics.stats import t_interval

ROOT = Path(__file__).parent / "results"
OUT = ROOT / "fedspine"
HEADLINE = ROOT / "headline" / "sst2" / "profile"
SPARSITIES = (30, 50)
SEEDS = (0, 1, 2)
ABSTRACT = "1.4-6.9x faster fine-tuning, +0.4-4.5 points of final accuracy at equal sparsity (80 devices)"


def fedspine_run(percent: int, seed: int) -> Path:
    return OUT / f"s{percent}" / "sst2" / "profile" / f"seed-{seed}" / "fedspine"


def one_shot(strategy: str, percent: int, seed: int) -> Path:
    return OUT / "one-shot" / f"seed-{seed}" / strategy / f"pruned-s{percent}"


def model_facts(folder: Path) -> dict | None:
    """Accuracy, parameters and bytes of a saved model: FedSpine's from its run, one-shot's from pruning.json."""
    if (folder / "pruning.json").exists():
        r = json.loads((folder / "pruning.json").read_text())
        return {"accuracy": r["accuracy"], "parameters": r["parameters"], "model_bytes": r["model_bytes"]}
    summary = folder.parent / "summary.json"
    if folder.name == "pruned_model" and summary.exists() and (folder / "config.json").exists():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            params = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
        return {"accuracy": json.loads(summary.read_text())["final_accuracy"], "parameters": params,
                "model_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors"))}
    return None


def latency_ms(folder: Path, examples: int = 256, batch: int = 32, repeats: int = 5) -> float:
    """Median over ``repeats`` of the time to classify the first ``examples`` SST-2 dev sentences (128 tokens at
    most, padded per batch), in ms per example, with plain transformers on 2 threads."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from legendfl.data.tasks import load_task

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    texts = [ex[0] for ex in load_task("sst2").dev[:examples]]
    batches = [tokenizer(texts[i:i + batch], truncation=True, max_length=128, padding=True, return_tensors="pt")
               for i in range(0, len(texts), batch)]
    times = []
    with torch.no_grad():
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            for enc in batches:
                model(**enc)
            if r:  # the first pass warms up
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / len(texts)


def equal_sparsity(measure: bool) -> str:
    cache_file = OUT / "latency.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    rows = [("FedSpine (pruned while tuned)", lambda p, s: fedspine_run(p, s) / "pruned_model")]
    for strategy in ("legend", "fedlora"):
        rows.append((f"{strategy} + one-shot pruning", lambda p, s, st=strategy: one_shot(st, p, s)))
        rows.append((f"{strategy} dense (no pruning)", lambda p, s, st=strategy: one_shot(st, 0, s)))
    lines = ["Equal sparsity: final models on the SST-2 dev set (872 examples; one standard error about 1.2 points), "
             "mean over the seeds with [min, max] (n < 5: the seeds' range); latency: ms per example, plain "
             "transformers on this CPU's 2 threads, 256 dev sentences in batches of 32, median of 5 passes.\n",
             "| target sparsity | model | n | accuracy (%) | FedSpine minus it (points) | parameters (M) | size (MB) | "
             "latency (ms/example) |", "|---|---|---|---|---|---|---|---|"]
    for percent in SPARSITIES:
        spine = {s: model_facts(fedspine_run(percent, s) / "pruned_model") for s in SEEDS}
        for label, where in rows:
            facts = {s: model_facts(where(percent, s)) for s in SEEDS}
            seeds = [s for s in SEEDS if facts[s] is not None]
            if not seeds:
                lines.append(f"| {percent}% | {label} | 0 | not run yet | | | | |")
                continue
            acc = t_interval([100 * facts[s]["accuracy"] for s in seeds])
            paired = [s for s in seeds if spine[s] is not None]
            diff = (t_interval([100 * (spine[s]["accuracy"] - facts[s]["accuracy"]) for s in paired]).format("{:+.2f}")
                    + f" (n = {len(paired)})") if paired and not label.startswith("FedSpine") else "-"
            lat = []
            for s in seeds:
                key = str(where(percent, s).relative_to(OUT))
                if key not in cache and measure:
                    cache[key] = latency_ms(where(percent, s))
                    cache_file.write_text(json.dumps(cache, indent=1, sort_keys=True))
                if key in cache:
                    lat.append(cache[key])
            lines.append(f"| {percent}% | {label} | {len(seeds)} | {acc.format('{:.2f}')} | {diff} | "
                         f"{statistics.mean(facts[s]['parameters'] for s in seeds) / 1e6:.2f} | "
                         f"{statistics.mean(facts[s]['model_bytes'] for s in seeds) / 1e6:.1f} | "
                         f"{t_interval(lat).format('{:.2f}') if lat else 'not measured'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", action="store_true", help="measure the models' CPU inference latency where not cached")
    measure = ap.parse_args().latency
    parts = []
    for percent in SPARSITIES:
        seeds = load({"fedspine": OUT / f"s{percent}" / "sst2" / "profile", "legend": HEADLINE, "fedlora": HEADLINE},
                     seeds=SEEDS)
        parts.append(table(seeds, f"FedSpine at target sparsity {percent}% vs LEGEND and FedLoRA (dense), SST-2"))
    parts.append(equal_sparsity(measure))
    parts.append(f"The abstract of FedSpine reports: {ABSTRACT}.\n")
    report = "\n".join(parts)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
