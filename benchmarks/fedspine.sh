#!/usr/bin/env bash
# Issue 23's benchmark: FedSpine against LEGEND and FedLoRA, dense and pruned once to the same sparsity, on the
# headline settings (SST-2, MiniLM, 10 Jetsons, 25 rounds; benchmarks/results/headline holds LEGEND's and
# FedLoRA's runs), at target sparsities 30% and 50%, seeds 0-2. Each step is resumable: finished runs and
# finished prunings are skipped. Order: what is worth having first if the CPU time runs out.
# Tables: .venv/bin/python benchmarks/fedspine_report.py [--latency]. Results in benchmarks/results/fedspine/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/fedspine
head=benchmarks/results/headline/sst2/profile
fedspine() {  # seed, percent
  .venv/bin/legendfl compare --profile headline --strategies fedspine --seeds "$1" --cost-models profile \
      --set "fedspine.sparsity=0.$2" --out "$out/s$2"
}
one_shot() {  # seed
  for strategy in legend fedlora; do  # pruned-s0 (the dense model merged), pruned-s30, pruned-s50
    dest="$out/one-shot/seed-$1/$strategy"
    [ -f "$dest/pruned-s50/pruning.json" ] || .venv/bin/legendfl prune "$head/seed-$1/$strategy" --sparsity 0 0.3 0.5 --out "$dest"
  done
}
for seed in 0 1 2; do
  fedspine "$seed" 30
  fedspine "$seed" 50
  one_shot "$seed"
done
