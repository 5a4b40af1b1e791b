#!/usr/bin/env bash
# LEGEND vs FedLoRA, HetLoRA, FedAdapter and the ablations (incl. LCD as printed) on SST-2, 3 seeds, both
# cost models; results in benchmarks/results/seeds/sst2/{profile,flops}/seed-N/<strategy>/ and tables.
# Resumable: finished runs are not re-run. Under the `flops` model the strategies whose decisions do not
# depend on time (fedlora, legend-no-depth) are re-timed from the `profile` runs, not re-trained.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/legendfl compare --profile seeds --seeds 0 1 2 --cost-models profile flops \
     --out benchmarks/results/seeds "$@"
