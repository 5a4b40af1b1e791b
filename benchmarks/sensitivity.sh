#!/usr/bin/env bash
# Issue 20's sensitivity table: LEGEND vs FedLoRA on seeds 0-4 of the headline settings (seeds 0-1 until
# 2026-12-03; one seed's whole row set before the next seed's), varying one choice
# at a time (every other setting is the headline's; FedLoRA's runs are the headline's, re-timed where the
# fleet changes: its decisions do not read time, so re-timing is exact):
#   - compute-to-transfer balance: the jetson profile's per-layer latencies scaled by 0.5 and 2
#     (fleet files written here; 1 is the headline itself);
#   - LEGEND's first round: depth ceil(L/2) (earlier versions) instead of L;
#   - HetLoRA's ranks 4-16 (earlier versions) instead of 2-8.
# Tables: .venv/bin/python benchmarks/headline_report.py. Results in benchmarks/results/headline/sensitivity/.
set -euo pipefail
cd "$(dirname "$0")/.."
base=benchmarks/results/headline/sst2/profile
out=benchmarks/results/headline/sensitivity
mkdir -p "$out/fleets"
jetson=src/legendfl/fleet/fleets/jetson.toml
for scale in 0.5 2; do  # the scaled fleets, written once: later seeds reuse seeds 0-1's files (jetson.toml has
  fleet="$out/fleets/jetson-compute-x$scale.toml"  # since gained a [server] table, which would change their hash)
  [ -f "$fleet" ] || python3 - "$jetson" "$fleet" "$scale" <<'PY'
import re, sys
src, dst, s = sys.argv[1], sys.argv[2], float(sys.argv[3])
text = open(src).read()
for key in ("forward_ms_per_layer", "backward_ms_per_trained_layer", "backward_ms_per_frozen_layer"):
    text, n = re.subn(rf"^{key} = ([0-9.]+)$", lambda m: f"{key} = {float(m.group(1)) * s:g}", text, flags=re.M)
    assert n == 1, key
open(dst, "w").write(f"# jetson.toml with every per-layer latency of its profile scaled by {s} (benchmarks/sensitivity.sh)\n" + text)
PY
done
for seed in 0 1 2 3 4; do
  for scale in 0.5 2; do
    fleet="$out/fleets/jetson-compute-x$scale.toml"
    .venv/bin/legendfl compare --profile headline --strategies legend --seeds "$seed" --cost-models profile \
        --set fleet="$fleet" --out "$out/compute-x$scale"
    dest="$out/compute-x$scale/sst2/profile/seed-$seed/fedlora"
    [ -f "$dest/summary.json" ] || .venv/bin/legendfl retime "$base/seed-$seed/fedlora" --cost-model profile --fleet "$fleet" --out "$dest"
  done
  .venv/bin/legendfl compare --profile headline --strategies legend --seeds "$seed" --cost-models profile \
      --set legend.initial_depth=3 --out "$out/first-round-half"
  .venv/bin/legendfl compare --profile headline --strategies hetlora --seeds "$seed" --cost-models profile \
      --set hetlora.r_min=4 hetlora.r_max=16 --out "$out/hetlora-4-16"
done
