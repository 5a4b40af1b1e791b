"""Both runtimes, bit for bit, for strategies the test suite does not run over Flower (it runs HetLoRA, FedEx-LoRA
and LEGEND there; each more Flower run costs the 8-minute suite 14-40 core-s).

For each strategy: two rounds (one for FedAdapter and FedSpine, whose round-2 choices follow device times) on a
loopback federation (SuperLink + 3 SuperNodes, `legendfl flower superexec`) and the same in this process with the
sequential engine, on the tiny random BERT of the tests (the plumbing is compared, not learning), with the
strategy's ranks fixed where they follow device speed (Flower measures its nodes' speeds, the simulator prices the
fleet's, so only fixed ranks make round 2 comparable). Compared: every device's loss, download and upload bytes, the
evaluation, what the aggregation reports (FedSpine's sparsity), and the exported artefact's tensors (torch.equal).

    .venv/bin/python benchmarks/flower_parity.py [--strategies flora flexlora fedadapter fedspine] [--out runs/flower-parity]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tomllib
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import _build_tiny_bert  # noqa: E402  (the tests' tiny random BERT)
from test_flower import DEPTHS, RUN_OPTIONS  # noqa: E402  (the Flower tests' run options)

from legendfl.config import RunConfig  # noqa: E402
from legendfl.experiments.runner import run  # noqa: E402
from legendfl.runtime.flower.local import run_local  # noqa: E402

FIXED_RANKS = {name: f"{name}.r_min = 4\n{name}.r_max = 4\n" for name in ("flora", "flexlora")}
# FedAdapter's trial groups and FedSpine's bandit choose from round 2 on by the round-1 times: measured over Flower,
# priced from the fleet in process, so only round 1 is comparable for them
ROUNDS = {"fedadapter": 1, "fedspine": 1}
ARTEFACTS = ("adapter", "merged_model", "pruned_model")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(flower: Path, local: Path) -> list[str]:
    """What differs between the two runs' folders (empty: nothing)."""
    diffs = []
    a, b = records(flower / "rounds.jsonl"), records(local / "rounds.jsonl")
    if len(a) != len(b):
        return [f"{len(a)} rounds over Flower, {len(b)} in process"]
    for x, y in zip(a, b):
        if x["missing"]:
            diffs.append(f"round {x['round']}: missing {x['missing']}")
        for key in ("eval_loss", "accuracy", "aggregation"):  # aggregation: e.g. FedSpine's sparsity
            if x[key] != y[key]:
                diffs.append(f"round {x['round']}: {key} {x[key]} != {y[key]}")
        for d, entry in x["devices"].items():
            for key in ("train_loss", "download_bytes", "upload_bytes"):
                if entry[key] != y["devices"][d][key]:
                    diffs.append(f"round {x['round']} device {d}: {key} {entry[key]} != {y['devices'][d][key]}")
    for name in ARTEFACTS:
        fa, fb = flower / name, local / name
        if fa.exists() != fb.exists():
            diffs.append(f"{name}: exported by one runtime only")
        elif fa.exists():
            for f in sorted(p.name for p in fb.glob("*.safetensors")):
                ta, tb = load_file(fa / f), load_file(fb / f)
                if sorted(ta) != sorted(tb) or not all(torch.equal(ta[k], tb[k]) for k in tb):
                    diffs.append(f"{name}/{f}: tensors differ")
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategies", nargs="+", default=["flora", "flexlora", "fedadapter", "fedspine"])
    ap.add_argument("--out", default="runs/flower-parity")
    ns = ap.parse_args()
    _build_tiny_bert()  # the model RUN_OPTIONS names
    failed = False
    for strategy in ns.strategies:
        out = Path(ns.out) / strategy
        shutil.rmtree(out, ignore_errors=True)
        options = (RUN_OPTIONS.replace('strategy = "legend"', f'strategy = "{strategy}"')
                   .replace(f"legend.fixed_depths = {DEPTHS}\n", "").replace("rounds = 2", f"rounds = {ROUNDS.get(strategy, 2)}")
                   + FIXED_RANKS.get(strategy, ""))
        status = run_local(None, 3, out / "flower", options=options, superexec="fork")
        run(RunConfig.from_sources(tomllib.loads(options), {"out_dir": str(out / "in-process"), "engine": "sequential"}))
        diffs = [f"Flower run {status}"] if status != "finished:completed" else compare(out / "flower" / "run", out / "in-process")
        rows = records(out / "in-process" / "rounds.jsonl")
        traffic = "; ".join(f"round {r['round']}: down {sorted({e['download_bytes'] for e in r['devices'].values()})} B, "
                            f"up {sorted({e['upload_bytes'] for e in r['devices'].values()})} B" for r in rows)
        print(f"{strategy}: {'identical' if not diffs else 'DIFFERENT: ' + '; '.join(diffs[:5])} ({traffic})")
        failed |= bool(diffs)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
