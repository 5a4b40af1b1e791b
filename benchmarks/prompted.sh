#!/usr/bin/env bash
# Issue 27's comparison: LEGEND, FedLoRA, HetLoRA, FedAdapter on SST-2, QNLI and MNLI posed as instructions, with
# SmolLM2-135M-Instruct (experiments/profiles/prompted.toml: 6 Jetsons, 6 rounds of 8 local steps of batch 8, 200
# seeded dev examples, scored by the likelier answer and by exact match). Declared 2026-12-02 before any of its runs,
# in the order worth having if the CPU time runs out (each step resumable: finished runs are not re-run, a run cut
# off resumes from its checkpoint):
#   1. SST-2, seeds 0, 1, 2 (one seed at a time, all four strategies);
#   2. QNLI, seeds 0, 1, 2;
#   3. MNLI, seeds 0, 1, 2.
# Protocol: the headline's (metrics/protocol.py): the target grid (every half point), the headline target (the
# highest grid target every strategy reaches, sustained, before the last quarter of its run, on every seed),
# accuracy at equal virtual time; ratios paired by seed, fewer than 5 seeds shown as the seeds' range.
# The base model's row: .venv/bin/python benchmarks/base_accuracy.py --profile prompted.
# Results in benchmarks/results/prompted/<task>/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/prompted
compare() {  # compare <task> <seed>...: the four strategies on one task, over the seeds given
  .venv/bin/legendfl compare --profile prompted --tasks "$1" --strategies legend fedlora hetlora fedadapter \
      --seeds "${@:2}" --cost-models profile --out "$out"
}
for task in sst2-prompted qnli-prompted mnli-prompted; do
  for seed in 0 1 2; do
    compare "$task" "$seed"
  done
done
# Then each task's profile tables over all three seeds (every run above is finished, so nothing is re-run; each
# per-seed invocation wrote its tables over its own seed only). A reporting step, added after the runs began.
for task in sst2-prompted qnli-prompted mnli-prompted; do
  compare "$task" 0 1 2
done
