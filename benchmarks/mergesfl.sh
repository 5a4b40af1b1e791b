#!/usr/bin/env bash
# Issue 24's benchmark: MergeSFL against LEGEND and FedLoRA on the headline settings (SST-2, MiniLM, 10 Jetsons,
# 25 rounds, 10 local steps of batch 16, lr 2e-3 cosine; experiments/profiles/headline.toml), MergeSFL with its
# defaults (split after block 3 of 6, D = 16, no ingress budget, no device cap, KL threshold 0.05), seeds 0-2.
# Declared before any run, in the order worth having if the CPU time runs out (each step resumable):
#   1. Dirichlet alpha 10: MergeSFL (LEGEND's and FedLoRA's runs are the headline's, benchmarks/results/headline);
#   2. alpha 0.1: MergeSFL, LEGEND, FedLoRA, one seed at a time;
#   3. alpha 0.1: the ablations mergesfl-no-merging and mergesfl-no-regulation;
#   4. alpha 0.5: MergeSFL, LEGEND, FedLoRA.
#   5. (declared 2026-12-02, before its runs) a setting where selection must choose: alpha 0.1 with the server's
#      ingress budget at 2 D = 32 examples per iteration (about half of what all 10 devices send when regulated,
#      51-68 in the alpha-0.1 runs), MergeSFL against its no-merging ablation under the same budget.
# Tables: .venv/bin/python benchmarks/mergesfl_report.py. Results in benchmarks/results/mergesfl/alpha-<a>/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/mergesfl
compare() {  # alpha, seed, strategies... (MERGESFL_BUDGET set: that ingress budget, in its own folder)
  local alpha=$1 seed=$2 budget=${MERGESFL_BUDGET:-}
  shift 2
  .venv/bin/legendfl compare --profile headline --strategies "$@" --seeds "$seed" --cost-models profile \
      --set "dirichlet_alpha=$alpha" ${budget:+"mergesfl.ingress_budget=$budget"} \
      --out "$out${budget:+/budget-$budget}/alpha-$alpha"
}
for seed in 0 1 2; do compare 10.0 "$seed" mergesfl; done
for seed in 0 1 2; do compare 0.1 "$seed" mergesfl legend fedlora; done
for seed in 0 1 2; do compare 0.1 "$seed" mergesfl-no-merging mergesfl-no-regulation; done
for seed in 0 1 2; do compare 0.5 "$seed" mergesfl legend fedlora; done
for seed in 0 1 2; do MERGESFL_BUDGET=32 compare 0.1 "$seed" mergesfl mergesfl-no-merging; done
