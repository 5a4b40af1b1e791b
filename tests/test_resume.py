"""Crash-safe resume: a run killed with SIGKILL (mid-training, or mid-write of its checkpoint) and resumed
ends with the records, summary and adapter bytes of an uninterrupted run. One strategy of each family. The
tiny random BERT (conftest.py): resume's exactness does not depend on learning."""
import json
import random
import signal
import time
from pathlib import Path

import pytest
from conftest import TINY_BERT, ChildRun, cli

pytestmark = pytest.mark.xdist_group("resume")  # one worker: the uninterrupted runs are made once for the module (pytest -n)

ROUNDS = 4
ARGS = ["--model", TINY_BERT, "--num-devices", "3", "--rounds", str(ROUNDS), "--max-local-steps", "2", "--max-examples-per-device", "32",
        "--max-dev-examples", "48", "--max-length", "32", "--validation-examples", "30", "--fedadapter.window", "2",
        "--threads", "1"]
WALL = {"wall_s", "wall_time_s", "plots"}


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items() if k not in WALL}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _same_run(a: Path, b: Path) -> None:
    ra = [_clean(json.loads(l)) for l in (a / "rounds.jsonl").read_text().splitlines()]
    rb = [_clean(json.loads(l)) for l in (b / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rb] == list(range(1, ROUNDS + 1))
    assert ra == rb
    assert _clean(json.loads((a / "summary.json").read_text())) == _clean(json.loads((b / "summary.json").read_text()))
    models = [p for p in ("adapter/adapter_model.safetensors", "merged_model/model.safetensors", "global_params.safetensors")
              if (a / p).exists()]
    assert len(models) == 1  # every strategy leaves its global model: peft's adapter, a merged model, or its tensors
    assert (a / models[0]).read_bytes() == (b / models[0]).read_bytes()
    assert not (b / "checkpoint.pt").exists()  # a finished run needs no checkpoint


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="session")  # not "module": a worker that runs another module's test in between keeps it
def uninterrupted(tmp_path_factory):
    runs = {}

    def get(strategy, extra=()):
        if (strategy, extra) not in runs:
            out = tmp_path_factory.mktemp(f"whole-{strategy}")
            r = cli("run", "--strategy", strategy, *ARGS, *extra, "--out-dir", str(out), "--overwrite")
            assert r.returncode == 0, r.stderr[-2000:]
            runs[strategy, extra] = out
        return runs[strategy, extra]

    return get


UNRELIABLE = ("--availability", "0.7", "--round-deadline-median", "1.2")  # offline and late devices, drawn per round


@pytest.mark.slow
@pytest.mark.parametrize("strategy,extra,seed", [("legend", (), 1), ("hetlora", (), 2), ("fedadapter", (), 3),
                                                 ("legend", UNRELIABLE, 4), ("mergesfl", (), 5), ("flexlora", (), 6),
                                                 ("flora", (), 8)])  # FLoRA's state covers FedEx-LoRA's (its ledger)
def test_killed_mid_training_and_resumed_equals_an_uninterrupted_run(tmp_path, uninterrupted, strategy, extra, seed):
    gen = random.Random(seed)
    k = gen.randint(2, ROUNDS - 1)  # the round during which the run is killed
    out = tmp_path / "killed"
    proc = ChildRun("run", "--strategy", strategy, *ARGS, *extra, "--out-dir", str(out))
    deadline = time.monotonic() + 300
    while _lines(out / "rounds.jsonl") < k - 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(gen.uniform(0.0, 0.4))  # somewhere inside round k (training, evaluation or writing)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists()
    r = cli("run", "--resume", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout
    _same_run(uninterrupted(strategy, extra), out)
    if extra:  # the resumed rounds drew the same offline and late devices
        missing = [m["reason"] for line in (out / "rounds.jsonl").read_text().splitlines() for m in json.loads(line)["missing"]]
        assert any(r.startswith("offline") for r in missing) and any(r.startswith("late") for r in missing)


@pytest.mark.slow
@pytest.mark.parametrize("torn", [3, 1])  # 1: killed before any checkpoint existed
def test_killed_while_writing_its_checkpoint_and_resumed_equals_an_uninterrupted_run(tmp_path, uninterrupted, torn):
    out = tmp_path / "torn"
    env = {"LEGENDFL_FAILPOINT": f"checkpoint-write:{torn}"}  # SIGKILL halfway through that checkpoint
    child = ChildRun("run", "--strategy", "legend", *ARGS, "--out-dir", str(out), env=env)
    assert child.wait(600) == -signal.SIGKILL
    assert _lines(out / "rounds.jsonl") == torn  # that round's record was written, its checkpoint torn
    assert list(out.glob(".checkpoint.pt.*.tmp"))  # the torn temporary file (core.files.write_atomic), never the checkpoint
    assert (out / "checkpoint.pt").exists() == (torn > 1)
    r = cli("run", "--resume", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    # the last whole checkpoint, and the torn round made again; with none, the whole run made again
    assert f"after round {torn - 1}" in r.stdout if torn > 1 else "made again from round 1" in r.stdout
    _same_run(uninterrupted("legend"), out)


def test_a_second_run_into_the_same_folder_is_refused_and_resume_checks_its_input(tmp_path):
    (tmp_path / "rounds.jsonl").write_text("{}\n")
    r = cli("run", "--rounds", "1", "--out-dir", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "out_dir" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "rounds.jsonl").read_text() == "{}\n"  # nothing lost
    r = cli("run", "--resume", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "no checkpoint.pt" in r.stderr
    r = cli("run", "--resume", str(tmp_path), "--rounds", "3", timeout=120)
    assert r.returncode == 2 and "drop --rounds" in r.stderr
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "summary.json").write_text("{}")  # a finished run: resume must not make it again
    r = cli("run", "--resume", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "has finished" in r.stderr and (tmp_path / "summary.json").read_text() == "{}"
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    r = cli("run", "--resume", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "is not a legendfl checkpoint" in r.stderr


def test_outputs_are_written_atomically_and_a_crash_midway_keeps_the_old_file(tmp_path):
    """core/files.py: every output (summary, config, records, tables, figures, checkpoints) goes through
    write_atomic; a writer killed halfway leaves the previous file whole and no temporary file behind."""
    from legendfl.core.files import write_atomic

    path = tmp_path / "summary.json"
    write_atomic(path, '{"round": 1}')

    def crash():
        raise KeyboardInterrupt  # a kill halfway through the write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, '{"round": 2, "more": "' + "x" * 1000 + '"}', halfway=crash)
    assert path.read_text() == '{"round": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    write_atomic(tmp_path / "new" / "fig.png", b"\x89PNG")  # bytes, and a folder made on the way
    assert (tmp_path / "new" / "fig.png").read_bytes() == b"\x89PNG"
