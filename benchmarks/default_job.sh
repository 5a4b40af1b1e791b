#!/usr/bin/env bash
# The README's main job, timed: `make run` (LEGEND, SST-2, MiniLM, 10 Jetson devices, alpha = 10).
# Prints wall time and the run's summary; results are recorded by hand in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
start=$(date +%s)
make run RUN_ARGS="${RUN_ARGS:-}"
end=$(date +%s)
echo "wall time of make run: $((end - start)) s on $(nproc) cores ($(uname -m))"
.venv/bin/python -c "import json; s=json.load(open('runs/default/summary.json')); print({k: s[k] for k in ('final_accuracy','best_accuracy','virtual_time_s','traffic_bytes','mean_waiting_s','wall_time_s')})"
