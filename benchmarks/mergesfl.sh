#!/usr/bin/env bash
# Issue 24's benchmark: MergeSFL against LEGEND and FedLoRA on the headline settings (SST-2, MiniLM, 10 Jetsons,
# 25 rounds, 10 local steps of batch 16, lr 2e-3 cosine; experiments/profiles/headline.toml), MergeSFL with its
# defaults (split after block 3 of 6, D = 16, no ingress budget, no device cap, KL threshold 0.05), seeds 0-2.
# Declared before any run, in the order worth having if the CPU time runs out (each step resumable):
#   1. Dirichlet alpha 10: MergeSFL (LEGEND's and FedLoRA's runs are the headline's, benchmarks/results/headline);
#   2. alpha 0.1: MergeSFL, LEGEND, FedLoRA, one seed at a time;
#   3. alpha 0.1: the ablations mergesfl-no-merging and mergesfl-no-regulation;
#   4. alpha 0.5: MergeSFL, LEGEND, FedLoRA.
# Tables: .venv/bin/python benchmarks/mergesfl_report.py. Results in benchmarks/results/mergesfl/alpha-<a>/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/mergesfl
compare() {  # alpha, seed, strategies...
  local alpha=$1 seed=$2
  shift 2
  .venv/bin/legendfl compare --profile headline --strategies "$@" --seeds "$seed" --cost-models profile \
      --set "dirichlet_alpha=$alpha" --out "$out/alpha-$alpha"
}
for seed in 0 1 2; do compare 10.0 "$seed" mergesfl; done
for seed in 0 1 2; do compare 0.1 "$seed" mergesfl legend fedlora; done
for seed in 0 1 2; do compare 0.1 "$seed" mergesfl-no-merging mergesfl-no-regulation; done
for seed in 0 1 2; do compare 0.5 "$seed" mergesfl legend fedlora; done
