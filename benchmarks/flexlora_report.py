"""Issue 26's table from the runs of benchmarks/flexlora.sh, from records alone.

    .venv/bin/python benchmarks/flexlora_report.py

Prints, and writes to benchmarks/results/flexlora/report.md, FlexLoRA next to LEGEND (the reference), HetLoRA and
FedLoRA by the headline protocol (metrics/comparison.py); their runs are the headline's, the same settings. A seed
is used only where every strategy has finished it; n is shown, intervals under 5 seeds are ranges.
"""
from __future__ import annotations

from pathlib import Path

from mergesfl_report import finished_table

ROOT = Path(__file__).parent / "results"
OUT = ROOT / "flexlora"
HEADLINE = ROOT / "headline" / "sst2" / "profile"
FLEXLORA = OUT / "sst2" / "profile"


def main() -> None:
    text = finished_table({"legend": HEADLINE, "flexlora": FLEXLORA, "hetlora": HEADLINE, "fedlora": HEADLINE},
                          "FlexLoRA next to LEGEND, HetLoRA and FedLoRA, SST-2, Dirichlet alpha 10 (headline settings)",
                          seeds=range(5))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
