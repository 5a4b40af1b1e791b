"""Replay of wrong invocations a new user makes (issue 21's survey, the cases it names and their neighbours):
each runs as a user would run it (a subprocess, 120 s limit) and is classified

- clear:     exit 2 and one line ``legendfl: error: ...`` that names the field, file or option (``expect``);
- unclear:   exit 2 and one line that does not name it;
- crash:     a traceback, another exit status, or more than one line of error;
- hang:      no answer within the limit;
- silent:    exit 0 (accepted) where the case is not a documented, deliberate acceptance;
- accepted:  exit 0 where it is (``deliberate``: the reason).

Usage: ``.venv/bin/python benchmarks/bad_inputs.py [--only WORD]``; prints one line per case and the counts.
Nothing is trained except where a case needs a finished run (a tiny random model, seconds)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import tiny_bert  # noqa: E402  (the suite's tiny random BERT)

TINY = ["--num-devices", "2", "--rounds", "1", "--max-local-steps", "1", "--max-examples-per-device", "8",
        "--max-dev-examples", "8", "--max-length", "16", "--validation-examples", "8", "--batch-size", "4", "--threads", "1"]


def cases(tmp: Path, model: str) -> list[dict]:
    """(name, argv, expect: words the error must contain, deliberate: why an acceptance is meant)."""
    def w(name: str, text: str) -> str:
        (tmp / name).write_text(text)
        return str(tmp / name)

    fleet = (ROOT / "src/legendfl/fleet/fleets/jetson.toml").read_text()
    run = tmp / "finished"
    empty = tmp / "empty-run"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    (empty / "rounds.jsonl").write_text("")
    garbage = tmp / "garbage-run"
    garbage.mkdir()
    (garbage / "config.json").write_text("{not json")
    (garbage / "rounds.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n')
    ckpt = {}
    for name, state in (("unknown-key", {"format": 1, "round": 1, "config": {"bogus": 1}, "strategy": {}, "transport": {},
                                         "records": []}),
                        ("no-keys", {"format": 1, "round": 1}), ("not-ours", None)):
        folder = tmp / f"ckpt-{name}"
        folder.mkdir()
        if state is None:
            (folder / "checkpoint.pt").write_bytes(b"garbage")
        else:
            torch.save(state, folder / "checkpoint.pt")
        ckpt[name] = str(folder)
    out = str(tmp / "out")
    c = [
        ("compare target above 1", ["compare", "--target", "1.5", "--out", out], "target"),
        ("compare target 0", ["compare", "--target", "0", "--out", out], "target"),
        ("compare unknown profile", ["compare", "--profile", "nope", "--out", out], "profile"),
        ("compare bad TOML profile", ["compare", "--profile", w("p.toml", "[run\n"), "--out", out], "p.toml"),
        ("compare --set unknown key", ["compare", "--set", "bogus=1", "--out", out], "--set"),
        ("compare unknown strategy", ["compare", "--strategies", "nope", "--out", out], "strategy"),
        ("run num_devices 1e20 (config)", ["run", "--config", w("n.toml", "num_devices = 100000000000000000000\n"),
                                           "--out-dir", out], "num_devices"),
        ("run num_devices 0", ["run", "--num-devices", "0", "--out-dir", out], "num_devices"),
        ("run lora rank 100000", ["run", "--model", model, *TINY, "--lora-rank", "100000", "--out-dir", out], "lora_rank"),
        ("run seed -1", ["run", "--seed", "-1", "--out-dir", out], "seed"),
        ("run availability 0", ["run", "--availability", "0", "--out-dir", out], "availability"),
        ("run availability 2", ["run", "--availability", "2", "--out-dir", out], "availability"),
        ("run lr 0", ["run", "--lr", "0", "--out-dir", out], "lr"),
        ("run lr nan", ["run", "--lr", "nan", "--out-dir", out], "lr"),
        ("run rounds 1.5", ["run", "--rounds", "1.5", "--out-dir", out], "--rounds"),
        ("run unknown strategy", ["run", "--strategy", "nope", "--out-dir", out], "strategy"),
        ("run data-file with task mnli", ["run", "--data-file", w("d.csv", "text,label\na,0\nb,1\n"), "--task", "mnli",
                                          "--out-dir", out], "task"),
        ("run missing data file", ["run", "--data-file", str(tmp / "none.csv"), "--out-dir", out], "data_file"),
        ("run two-row data file", ["run", "--model", model, *TINY, "--data-file", w("two.csv", "text,label\na,0\nb,1\n"),
                                   "--out-dir", out], "label_column"),
        ("run unknown config key", ["run", "--config", w("k.toml", "bogus = 1\n"), "--out-dir", out], "bogus"),
        ("run config not TOML", ["run", "--config", w("b.toml", "rounds = = 2\n"), "--out-dir", out], "b.toml"),
        ("run fleet min > max", ["run", "--fleet", w("f1.toml", fleet.replace("min_mbps = 1.0\nmax_mbps = 30.0",
                                                                             "min_mbps = 50.0\nmax_mbps = 1.0")),
                                 "--out-dir", out], "min_mbps"),
        ("run fleet availability 0", ["run", "--fleet", w("f2.toml", fleet.replace("[[device_types]]",
                                                                                   "[[device_types]]\navailability = 0", 1)),
                                      "--out-dir", out], "availability"),
        ("run fleet without a type name", ["run", "--fleet", w("f3.toml", fleet.replace('name = "tx2"', "", 1)),
                                           "--out-dir", out], "device_types[0].name"),
        ("run fleet missing file", ["run", "--fleet", str(tmp / "none.toml"), "--out-dir", out], "fleet"),
        ("run into a folder with files", ["run", "--out-dir", str(garbage)], "out_dir"),
        ("resume without checkpoint", ["run", "--resume", str(garbage)], "checkpoint"),
        ("resume with flags", ["run", "--resume", str(garbage), "--rounds", "2"], "--rounds"),
        ("resume a file that is not ours", ["run", "--resume", ckpt["not-ours"]], "checkpoint"),
        ("resume a checkpoint with an unknown key", ["run", "--resume", ckpt["unknown-key"]], "bogus"),
        ("resume a checkpoint without its keys", ["run", "--resume", ckpt["no-keys"]], "config"),
        ("retime into its own folder", ["retime", str(run), "--cost-model", "flops", "--out", str(run)], "--out"),
        ("retime empty records", ["retime", str(empty), "--cost-model", "flops", "--out", str(tmp / "rt1")], "rounds"),
        ("retime garbage config.json", ["retime", str(garbage), "--cost-model", "flops", "--out", str(tmp / "rt2")],
         "config.json"),
        ("retime not a run", ["retime", str(tmp), "--cost-model", "flops", "--out", str(tmp / "rt3")], "config.json"),
        ("profile threads -2", ["profile", "--threads", "-2"], "--threads"),
        ("profile threads 0", ["profile", "--threads", "0"], "--threads"),
        ("profile seq-len 100000", ["profile", "--model", model, "--seq-len", "100000"], "--seq-len"),
        ("profile batch-size 100000", ["profile", "--batch-size", "100000"], "--batch-size"),
        ("profile batch-size 0", ["profile", "--batch-size", "0"], "--batch-size"),
        ("eval-adapter without adapter", ["eval-adapter", str(garbage)], "adapter"),
        ("eval-adapter max-length 0", ["eval-adapter", str(run / "adapter"), "--max-length", "0"], "--max-length"),
        ("eval-adapter other task's labels", ["eval-adapter", str(run / "adapter"), "--task", "mnli",
                                              "--model", model], "labels"),
        ("fleet unknown", ["fleet", "--fleet", "nope"], "fleet"),
        ("fleet rounds 0", ["fleet", "--rounds", "0"], "--rounds"),
        ("fleet 1e20 devices", ["fleet", "--num-devices", "100000000000000000000"], "num_devices"),
    ]
    out_cases = [{"name": n, "argv": a, "expect": e} for n, a, e in c]
    out_cases.append({"name": "labels written 0.0/1/1.0", "argv": ["run", "--model", model, *TINY, "--data-file", w(
        "l.csv", "text,label\n" + "".join(f"t{i},{v}\n" for i, v in enumerate(["0", "1.0", "0.0", "1"] * 10))),
        "--out-dir", str(tmp / "labels"), "--overwrite"], "expect": "",
        "deliberate": "integral numbers are one class however written (data/tasks.py canonical_label): 2 classes"})
    return out_cases


def classify(case: dict, timeout: float) -> tuple[str, str]:
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1"}
    try:
        r = subprocess.run([sys.executable, "-m", "legendfl", *case["argv"]], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return "hang", f"no answer within {timeout:.0f} s"
    err = r.stderr.strip()
    if r.returncode == 0:
        return ("accepted", case["deliberate"]) if case.get("deliberate") else ("silent", r.stdout.strip()[-120:])
    if "Traceback" in r.stderr or r.returncode != 2 or len(err.splitlines()) != 1:
        return "crash", (err.splitlines() or [""])[-1][:160]
    if case["expect"].lower() in err.lower():
        return "clear", err[:160]
    return "unclear", err[:160]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run only the cases whose name contains this word")
    ap.add_argument("--timeout", type=float, default=120.0)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = str(tiny_bert(tmp / "tiny-bert"))
        finished = subprocess.run([sys.executable, "-m", "legendfl", "--quiet", "run", "--model", model, *TINY,
                                   "--out-dir", str(tmp / "finished")], capture_output=True, text=True, cwd=ROOT)
        assert finished.returncode == 0, finished.stderr[-2000:]
        counts: dict[str, int] = {}
        start = time.time()
        for case in cases(tmp, model):
            if ns.only and ns.only not in case["name"]:
                continue
            verdict, detail = classify(case, ns.timeout)
            counts[verdict] = counts.get(verdict, 0) + 1
            print(f"{verdict:9s} {case['name']:42s} {detail}", flush=True)
    print(json.dumps({"cases": sum(counts.values()), **counts, "seconds": round(time.time() - start)}))
    return 0 if set(counts) <= {"clear", "accepted"} else 1


if __name__ == "__main__":
    sys.exit(main())
