#!/usr/bin/env bash
# Issue 26's FlexLoRA benchmark: FlexLoRA with its defaults (ranks 2-8 by device speed, as HetLoRA's) on the headline
# settings (SST-2, MiniLM, 10 Jetsons, 25 rounds, 10 local steps of batch 16, lr 2e-3 cosine;
# experiments/profiles/headline.toml), seeds 0-4, one seed at a time (each step resumable). LEGEND's, HetLoRA's and
# FedLoRA's runs are the headline's (benchmarks/results/headline, the same settings).
# Tables: .venv/bin/python benchmarks/newer_baselines_report.py. Results in benchmarks/results/flexlora/.
set -euo pipefail
cd "$(dirname "$0")/.."
for seed in 0 1 2 3 4; do
  .venv/bin/legendfl compare --profile headline --strategies flexlora --seeds "$seed" --cost-models profile \
      --out benchmarks/results/flexlora
done
