"""Issue 26's tables from the runs of benchmarks/flexlora.sh and benchmarks/fedexlora_flora.sh, from records alone.

    .venv/bin/python benchmarks/newer_baselines_report.py

Prints, and writes to benchmarks/results/flexlora/report.md and benchmarks/results/fedexlora_flora/report.md, each
newer method next to LEGEND (the reference), HetLoRA and FedLoRA by the headline protocol (metrics/comparison.py);
their runs are the headline's, the same settings. A seed is used only where every strategy of a table has finished
it; n is shown, intervals under 5 seeds are ranges.
"""
from __future__ import annotations

from pathlib import Path

from mergesfl_report import finished_table

ROOT = Path(__file__).parent / "results"
HEADLINE = ROOT / "headline" / "sst2" / "profile"
TABLES = {  # output folder -> the newer strategies whose runs it holds
    "flexlora": ("flexlora",),
    "fedexlora_flora": ("fedexlora", "flora"),
}
NAMES = {"flexlora": "FlexLoRA", "fedexlora": "FedEx-LoRA", "flora": "FLoRA"}


def main() -> None:
    for folder, newer in TABLES.items():
        runs = ROOT / folder / "sst2" / "profile"
        sources = {"legend": HEADLINE, **{name: runs for name in newer}, "hetlora": HEADLINE, "fedlora": HEADLINE}
        text = finished_table(sources, f"{' and '.join(NAMES[n] for n in newer)} next to LEGEND, HetLoRA and FedLoRA, "
                                       "SST-2, Dirichlet alpha 10 (headline settings)", seeds=range(5))
        (ROOT / folder).mkdir(parents=True, exist_ok=True)
        (ROOT / folder / "report.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
