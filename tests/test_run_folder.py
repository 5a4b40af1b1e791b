"""A run's folder (runtime/run_folder.py, run_session.py): one writer at a time, --overwrite removes the old
run's outputs only after validation, input files that changed are refused on resume and reuse, checkpoints
cannot run code, torn record lines are dropped, and an unexpected error is one line. A tiny random BERT:
nothing here depends on learning."""
import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from conftest import ChildRun, cli

from legendfl.runtime.run_folder import LOCK, RunFolder, changed_inputs, input_fingerprint

TINY = ["--num-devices", "2", "--rounds", "2", "--max-local-steps", "1", "--max-examples-per-device", "8",
        "--max-dev-examples", "8", "--max-length", "16", "--validation-examples", "8", "--batch-size", "4",
        "--threads", "1"]


def _csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    return str(path)


def _data(tmp_path):
    return _csv(tmp_path / "data.csv", [(f"good film number {i}" if i % 2 else f"bad film number {i}", i % 2)
                                        for i in range(60)])


def test_a_folder_being_written_is_refused_to_a_second_process(tmp_path, tiny_bert_dir):
    out = tmp_path / "run"
    with RunFolder(out):
        with pytest.raises(ValueError, match="being written by another process"):
            RunFolder(out).__enter__()
        r = cli("run", "--model", tiny_bert_dir, *TINY, "--out-dir", str(out), timeout=120, process=True)
        assert r.returncode == 2 and f"pid {os.getpid()}" in r.stderr and "Traceback" not in r.stderr
        assert not (out / "config.json").exists()
    with RunFolder(out):  # released: a second holder now gets it
        pass


def test_overwrite_removes_the_old_outputs_only_after_validation(tmp_path, tiny_bert_dir):
    out = tmp_path / "run"
    out.mkdir()
    old = {"summary.json": "{}", "rounds.jsonl": "{}\n", "fig7.png": "png", "notes.txt": "the user's own file"}
    for name, text in old.items():
        (out / name).write_text(text)
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_model.safetensors").write_text("an earlier run's adapter")
    r = cli("run", "--model", tiny_bert_dir, *TINY, "--task", "file", "--data-file", str(tmp_path / "missing.csv"),
            "--out-dir", str(out), "--overwrite", timeout=120)
    assert r.returncode == 2 and "data_file" in r.stderr
    assert all((out / n).read_text() == t for n, t in old.items()) and (out / "adapter").exists()  # nothing lost
    r = cli("run", "--model", tiny_bert_dir, *TINY, "--strategy", "fedadapter", "--out-dir", str(out), "--overwrite",
            timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / "adapter").exists() and "adapter/" not in r.stdout  # FedAdapter exports no peft adapter: not the old one
    assert "global_params.safetensors" in r.stdout  # but its own global tensors, reloadable by name
    with safe_open(out / "global_params.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["legendfl"])
        assert (meta["method"], meta["labels"]) == ("adapter", ["0", "1"]) and any("adapter_down" in k for k in f.keys())
    assert not (out / "fig7.png").exists() and (out / "notes.txt").read_text() == old["notes.txt"]
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 2
    inputs = json.loads((out / "inputs.json").read_text())
    assert inputs["model"]["path"] == str(tiny_bert_dir) and len(inputs["model"]["sha256"]) == 64


def test_resume_refuses_input_files_that_changed(tmp_path, tiny_bert_dir):
    out, data = tmp_path / "run", _data(tmp_path)
    args = ("run", "--model", tiny_bert_dir, *TINY, "--rounds", "3", "--task", "file", "--data-file", data,
                "--out-dir", str(out))
    child = ChildRun(*args, env={"LEGENDFL_FAILPOINT": "checkpoint-write:2"})  # killed halfway through round 2's checkpoint
    assert child.wait(300) != 0 and (out / "checkpoint.pt").exists()
    with open(data, "a") as fh:
        fh.write("an added line,1\n")
    r = cli("run", "--resume", str(out), timeout=120)
    assert r.returncode == 2 and "data_file" in r.stderr and "changed since" in r.stderr, r.stderr
    assert (out / "checkpoint.pt").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert changed_inputs(json.loads((out / "inputs.json").read_text()), cfg) == [f"data_file {data!r} (changed since)"]
    assert input_fingerprint({"fleet": "jetson", "model": "minilm"}) == {}  # built-in names are not files


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_would_run_code_or_lacks_its_parts_is_refused(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    torch.save({"format": 1, "round": 1, "config": {}, "strategy": _Payload(), "transport": {}, "records": []},
               tmp_path / "checkpoint.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    r = cli("run", "--resume", str(tmp_path), timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "not a legendfl checkpoint" in r.stderr and not (tmp_path / "pwned").exists()
    torch.save({"format": 1, "round": 1}, tmp_path / "checkpoint.pt")
    r = cli("run", "--resume", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "lacks config, strategy, transport, records" in r.stderr
    torch.save({"format": 1, "round": 1, "config": {"no_such_option": 1}, "strategy": {}, "transport": {},
                "records": []}, tmp_path / "checkpoint.pt")
    r = cli("run", "--resume", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "unknown option(s) ['no_such_option']" in r.stderr and "Traceback" not in r.stderr


def test_a_torn_last_record_is_dropped_and_a_bad_middle_one_named(tmp_path):
    from legendfl.metrics.summary import read_records

    path = tmp_path / "rounds.jsonl"
    path.write_text('{"round": 1}\n{"round": 2}\n{"round": 3, "acc')
    assert read_records(path) == [{"round": 1}, {"round": 2}]
    path.write_text('{"round": 1}\nnot json\n{"round": 3}\n')
    with pytest.raises(ValueError, match="rounds.jsonl, line 2: not a JSON record"):
        read_records(path)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from legendfl import cli as cli_module

    def boom(ns):
        raise RuntimeError("something nobody foresaw\nsecond line")

    parser = cli_module.make_parser()
    monkeypatch.setattr(cli_module, "make_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["strategies"].set_defaults(func=boom)
    assert cli_module.main(["strategies"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: something nobody foresaw" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        cli_module.main(["--debug", "strategies"])


def test_the_lock_file_is_not_an_output(tmp_path):
    folder = RunFolder(tmp_path / "r")
    with folder:
        assert (tmp_path / "r" / LOCK).exists() and not folder.holds_outputs()
        folder.check_empty(overwrite=False)


def test_an_exported_folder_appears_whole_or_not_at_all(tmp_path):
    """A model folder written by a library (peft, transformers) is staged beside its place and renamed there when
    complete: a crash while writing leaves the earlier folder as it was and no staging folder behind; a torn
    staging folder of a killed process is an output `--overwrite` removes."""
    from legendfl.core.files import staged_directory

    out = tmp_path / "adapter"
    with staged_directory(out) as staging:
        (staging / "weights").parent.mkdir(parents=True)
        (staging / "weights").write_text("one")
    assert (out / "weights").read_text() == "one" and not staging.exists()
    with pytest.raises(RuntimeError, match="killed"):
        with staged_directory(out) as staging:
            staging.mkdir()
            (staging / "weights").write_text("tw")  # half of "two"
            raise RuntimeError("killed while writing")
    assert (out / "weights").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    with staged_directory(out):
        pass  # wrote nothing (a method without an export): the folder stays
    assert (out / "weights").read_text() == "one"
    (tmp_path / ".adapter.partial").mkdir()  # a killed process's staging folder
    with RunFolder(tmp_path) as folder:
        assert folder.holds_outputs() and sorted(folder.clear()) == [".adapter.partial", "adapter"]
