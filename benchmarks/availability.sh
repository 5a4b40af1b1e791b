#!/usr/bin/env bash
# LEGEND with 100/70/50% device availability and with a round deadline (issue 13); results in BENCHMARKS.md.
# Prints each run's final/best accuracy, virtual time and traffic. About 3 minutes a run on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
OUT=${OUT:-runs/bench-availability}
COMMON="--config configs/default.toml --rounds 10 --max-local-steps 10 --seed ${SEED:-0} --overwrite"
for a in 1.0 0.7 0.5; do
  .venv/bin/legendfl --quiet run $COMMON --availability "$a" --out-dir "$OUT/a$a"
done
.venv/bin/legendfl --quiet run $COMMON --availability 0.7 --round-deadline-median 1.5 --out-dir "$OUT/a0.7-d1.5"
