#!/usr/bin/env bash
# How close honest updates come to the default bound on a device's change (core/validation.py: the most its
# AdamW steps can move its weights), per strategy, on the real model and SST-2 with the main job's settings
# (configs/default.toml) on 4 devices for 3 rounds. Prints the largest update_norm / update_norm_bound.
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
OUT=${OUT:-runs/bench-update-norms}
for s in legend fedlora hetlora fedadapter full; do
  .venv/bin/legendfl --quiet run --config configs/default.toml --strategy "$s" --num-devices 4 --rounds 3 \
      --seed "${SEED:-0}" --out-dir "$OUT/$s" --overwrite
done
.venv/bin/python - "$OUT" <<'PY'
import sys
from pathlib import Path

from legendfl.metrics.summary import read_records

print("| strategy | device-rounds | update norm: median / largest | bound: smallest | largest norm / bound |")
print("|---|---|---|---|---|")
for run in sorted(Path(sys.argv[1]).iterdir()):
    entries = [d for rec in read_records(run / "rounds.jsonl") for d in rec["devices"].values()]
    norms = sorted(d["update_norm"] for d in entries)
    ratio = max(d["update_norm"] / d["update_norm_bound"] for d in entries)
    print(f"| {run.name} | {len(entries)} | {norms[len(norms) // 2]:.3g} / {norms[-1]:.3g} | "
          f"{min(d['update_norm_bound'] for d in entries):.3g} | {ratio:.3f} |")
PY
