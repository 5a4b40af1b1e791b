#!/usr/bin/env bash
# Issue 20's comparison, in the order it is worth having if the CPU time runs out (each step resumable:
# finished runs are not re-run, a run cut off resumes from its checkpoint):
#   1. LEGEND vs FedLoRA, HetLoRA, FedAdapter, seeds 0-4 (the headline table);
#   2. the sensitivity runs, seeds 0-1 (benchmarks/sensitivity.sh: 6 runs, a whole table);
#   3. the ablations (w/o LD, w/o RD, Algorithm 1 as printed), seeds 0-4 (15 runs; seeds 3-4 added in the
#      eighteenth session, 2026-12-03).
# Tables: .venv/bin/python benchmarks/headline_report.py. Results in benchmarks/results/headline/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/headline
.venv/bin/legendfl compare --profile headline --strategies legend fedlora hetlora fedadapter \
    --seeds 0 1 2 3 4 --cost-models profile --out "$out"
bash benchmarks/sensitivity.sh
.venv/bin/legendfl compare --profile headline --strategies legend legend-no-depth legend-no-rank legend-literal \
    --seeds 0 1 2 3 4 --cost-models profile --out "$out"
