"""Issue 24's tables from the runs of benchmarks/mergesfl.sh, from records alone.

    .venv/bin/python benchmarks/mergesfl_report.py

Prints, and writes to benchmarks/results/mergesfl/report.md:
1. per Dirichlet alpha, MergeSFL against LEGEND and FedLoRA (at alpha 10 their runs are the headline's, the same
   settings) by the headline protocol (metrics/comparison.py, MergeSFL the reference: its speed-up over each);
2. the ablation at alpha 0.1 (MergeSFL without merging, without regulation), and MergeSFL against its no-merging
   ablation under an ingress budget of 32 examples per iteration (where selection must choose);
3. what MergeSFL's rounds were made of: examples merged per iteration, devices per round, the activations' share
   of its traffic, round time, the server's compute.
A seed is used only where every strategy of a table has finished it; n is shown, intervals under 5 seeds are ranges.
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean

from headline_report import finished, load, table

from legendfl.metrics.summary import read_records

ROOT = Path(__file__).parent / "results"
OUT = ROOT / "mergesfl"
HEADLINE = ROOT / "headline" / "sst2" / "profile"
ALPHAS = ("0.1", "0.5", "10.0")
CAPPED = OUT / "capped" / "alpha-0.1" / "sst2" / "profile"  # the batch cap's run (b76e7bb), seed 0
BUDGET = OUT / "budget-32" / "alpha-0.1" / "sst2" / "profile"  # mergesfl.ingress_budget = 32 (step 5 of mergesfl.sh)
ABSTRACT = ("80 Jetsons, CNNs on images, audio and sensor data: +5.82 to 26.22 points of final accuracy and 1.74-4.14x "
            "speed-up over its baselines (split and federated learning methods)")


def base(alpha: str) -> Path:
    return OUT / f"alpha-{alpha}" / "sst2" / "profile"


def sources(alpha: str, names: list[str]) -> dict[str, Path]:
    return {n: HEADLINE if alpha == "10.0" and n in ("legend", "fedlora") else base(alpha) for n in names}


def finished_table(sources: dict[str, Path], title: str, seeds: range = range(3)) -> str:
    """The comparison over the seeds every listed strategy finished; strategies that finished no seed with the first
    one are left out and named."""
    first, *others = sources
    kept = {first: sources[first], **{n: sources[n] for n in others
                                      if any(finished(sources[first] / f"seed-{s}" / first) and finished(sources[n] / f"seed-{s}" / n)
                                             for s in seeds)}}
    left = [n for n in sources if n not in kept]
    note = f" (not finished, left out: {', '.join(left)})" if left else ""
    if len(kept) < 2:
        return f"{title}{note}: nothing to compare yet.\n"
    return table(load(kept, seeds=seeds), f"{title}{note}")


def composition(alpha: str, name: str = "mergesfl", root: Path | None = None, label: str = "") -> str:
    rows = []
    for seed in range(3):
        folder = (root or base(alpha)) / f"seed-{seed}" / name
        if not finished(folder):
            continue
        rec = read_records(folder / "rounds.jsonl")
        agg = [r["aggregation"] for r in rec]
        activation = sum(sum(a.get("activation_upload_bytes", [])) + sum(a.get("activation_download_bytes", [])) for a in agg)
        merged = mean(sum(e["examples"] for e in r["devices"].values()) / r["aggregation"]["iterations"] for r in rec)
        kls = [a["merged_kl"] for a in agg if a.get("merged_kl") is not None]
        rows.append(f"| {alpha} | {name}{label} | {seed} | {mean(a['merged_batch'] for a in agg):.1f} / {merged:.1f} | "
                    f"{mean(len(a['selected']) for a in agg):.1f} | {100 * activation / rec[-1]['traffic_bytes']:.1f}% | "
                    f"{rec[-1]['traffic_bytes'] / 1e6:.0f} | {mean(r['round_time_s'] for r in rec):.2f} | "
                    f"{sum(a.get('server_compute_s', 0.0) for a in agg):.2f} | "
                    f"{f'{mean(kls):.4f} ({len(kls)})' if kls else '-'} |")
    return "\n".join(rows)


def main() -> None:
    parts = []
    for alpha in ALPHAS:
        parts.append(finished_table(sources(alpha, ["mergesfl", "legend", "fedlora"]),
                                    f"MergeSFL vs LEGEND and FedLoRA, SST-2, Dirichlet alpha {alpha}"))
    parts.append(finished_table({"mergesfl": CAPPED, "legend": base("0.1"), "fedlora": base("0.1")},
                                "MergeSFL with each batch capped at what its device holds (b76e7bb) vs LEGEND and FedLoRA, "
                                "SST-2, Dirichlet alpha 0.1"))
    parts.append(finished_table(sources("0.1", ["mergesfl", "mergesfl-no-merging", "mergesfl-no-regulation"]),
                                "MergeSFL's ablation, SST-2, Dirichlet alpha 0.1"))
    parts.append(finished_table({"mergesfl": BUDGET, "mergesfl-no-merging": BUDGET},
                                "MergeSFL against random selection under an ingress budget of 32 examples per iteration, "
                                "SST-2, Dirichlet alpha 0.1"))
    lines = ["| alpha | strategy | seed | examples merged per iteration, planned / sent (mean over rounds) | devices per round | "
             "activations' share of traffic | traffic (MB) | mean round (s) | server compute, whole run (s) | "
             "merged KL to the reference, mean (rounds chosen by merging) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row for alpha in ALPHAS for name in ("mergesfl", "mergesfl-no-merging", "mergesfl-no-regulation")
              for row in [composition(alpha, name)] if row]
    lines += [row for row in [composition("0.1", "mergesfl", CAPPED, " (capped)")] if row]
    lines += [row for name in ("mergesfl", "mergesfl-no-merging") for row in [composition("0.1", name, BUDGET, " (budget 32)")]
              if row]
    parts.append("What MergeSFL's rounds were made of:\n\n" + "\n".join(lines) + "\n")
    parts.append(f"MergeSFL's abstract: {ABSTRACT}.\n")
    report = "\n".join(parts)
    print(report)
    (OUT / "report.md").write_text(report)


if __name__ == "__main__":
    main()
