"""Wall time of a simulated round, sequential vs batched engine (issue 15); results in BENCHMARKS.md.

    .venv/bin/python benchmarks/batched_engine.py                      # MiniLM, 10 and 80 devices, this machine
    .venv/bin/python benchmarks/batched_engine.py --devices 80 --device cuda --random-weights mpnet-shape

Runs ``legendfl run`` (the default job's settings: LEGEND, batch 16, 25 local steps) for each engine and
device count for ``--rounds`` rounds, evaluating only after the last, and reports the wall time of the rounds
without evaluation (round 1: every device at depth ceil(L/2); later rounds: LCD's mixed depths) and whether
both engines made the same decisions (virtual time and traffic, which do not depend on wall time).
``--random-weights minilm-shape|mpnet-shape`` times a randomly initialised BERT of MiniLM's shapes (6 x 384) or
of 12 x 768 instead of the packaged MiniLM (where real weights cannot travel: timing does not depend on weight
values; accuracy then means nothing).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"minilm-shape": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
          "mpnet-shape": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}


def random_model(shape: str, folder: Path, tokenizer_path: str | None = None) -> str:
    """A random-weight BERT of the given shapes with MiniLM's tokenizer (or the one in ``tokenizer_path``, where
    the packaged model cannot travel), saved as a local model folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from legendfl.models.backbone import resolve_model_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or resolve_model_path("minilm"))
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), num_labels=2, **SHAPES[shape]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def one_run(engine: str, devices: int, args, model: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "legendfl", "--quiet", "run", "--config", str(ROOT / "configs/default.toml"),
           "--model", model, "--num-devices", str(devices), "--rounds", str(args.rounds), "--eval-every", "1000",
           "--max-dev-examples", "64", "--engine", engine, "--device", args.device, "--out-dir", str(out), "--overwrite",
           *args.extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    # the last round also evaluates (64 examples); with --rounds 1 that round is timed, evaluation included
    timed = [r["wall_s"] for r in records[:-1]] or [records[-1]["wall_s"]]
    return {"engine": engine, "devices": devices, "round_wall_s": timed, "median_round_s": statistics.median(timed),
            "virtual_time_s": records[-1]["virtual_time_s"], "traffic_bytes": records[-1]["traffic_bytes"],
            "process_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[10, 80])
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (the last one evaluates and is not "
                   "timed, unless it is the only one)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--random-weights", choices=sorted(SHAPES), help="time a random-weight BERT of these shapes")
    p.add_argument("--tokenizer", help="with --random-weights: a saved tokenizer folder (default: packaged MiniLM's)")
    p.add_argument("--engines", nargs="+", default=["sequential", "batched"], choices=("sequential", "batched"))
    p.add_argument("--json", help="write the results here too")
    p.add_argument("extra", nargs="*", help="more `legendfl run` flags, after --")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(args.random_weights, Path(tmp) / "model", args.tokenizer) if args.random_weights else "minilm"
        rows = []
        for devices in args.devices:
            for engine in args.engines:
                rows.append(one_run(engine, devices, args, model, Path(tmp) / f"{engine}-{devices}"))
                print(json.dumps(rows[-1]), flush=True)
                if args.json:  # as each run ends: a later run that is stopped loses nothing
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nmachine: {platform.processor() or platform.machine()}, device {args.device}, model "
          f"{args.random_weights or 'minilm'}, {max(args.rounds - 1, 1)} timed rounds per run\n")
    if set(args.engines) != {"sequential", "batched"}:
        return  # a table of speed-ups needs both engines
    print("| devices | sequential s/round | batched s/round | speed-up | same virtual time and traffic |")
    print("|---|---|---|---|---|")
    for devices in args.devices:
        s, b = (next(r for r in rows if r["devices"] == devices and r["engine"] == e) for e in ("sequential", "batched"))
        same = abs(s["virtual_time_s"] - b["virtual_time_s"]) < 1e-6 * s["virtual_time_s"] and s["traffic_bytes"] == b["traffic_bytes"]
        print(f"| {devices} | {s['median_round_s']:.1f} | {b['median_round_s']:.1f} | "
              f"{s['median_round_s'] / b['median_round_s']:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
