"""Inputs that were accepted silently, misread, crashed or hung (issue 21), each now refused in one line naming
the field, file or option, or read as the user meant. In process wherever the CLI is not the subject."""
import contextlib
import io
import json

import pytest
from conftest import cli

from legendfl.cli import main
from legendfl.config import RunConfig
from legendfl.data.tasks import canonical_label, load_file_task
from legendfl.fleet.devices import load_fleet


def _main(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def _one_line(code, err, *words):
    assert code == 2 and err.count("\n") == 1 and err.startswith("legendfl: error:"), err
    for w in words:
        assert w in err, (w, err)


def test_options_that_were_accepted_silently(tmp_path):
    _one_line(*_main("run", "--seed", "-1", "--out-dir", str(tmp_path / "a")), "seed", ">= 0")
    _one_line(*_main("run", "--availability", "0", "--out-dir", str(tmp_path / "b")), "availability")
    (tmp_path / "d.csv").write_text("text,label\na,0\nb,1\n")
    _one_line(*_main("run", "--data-file", str(tmp_path / "d.csv"), "--task", "mnli", "--out-dir", str(tmp_path / "c")),
              "task must be 'file'", "'mnli'")
    cfg = tmp_path / "huge.toml"
    cfg.write_text("num_devices = 100000000000000000000\n")  # hung for minutes, 7 GB, before
    _one_line(*_main("run", "--config", str(cfg), "--out-dir", str(tmp_path / "d")), "num_devices", "100000")
    assert RunConfig(data_file=str(tmp_path / "d.csv")).task == "sst2"  # the README's form: the default task


def test_numeric_labels_are_one_class_however_written(tmp_path):
    assert [canonical_label(x) for x in ("1", "1.0", 1, 1.0, " 0.0 ", "pos", "0.5", -2.0)] == \
        ["1", "1", "1", "1", "0", "pos", "0.5", "-2"]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": v}) + "\n"
                            for i, v in enumerate([0, 1, 0.0, 1.0, "0", "1", "1.0", "0.0"] * 3)))
    task = load_file_task(str(path), str(path), ["text"], "label")
    assert task.label_names == ["0", "1"] and sorted({ex[2] for ex in task.train}) == [0, 1]
    two = tmp_path / "two.csv"
    two.write_text("text,label\na,0\nb,1\n")
    with pytest.raises(ValueError, match="after holding out 1 of its rows as the dev split"):
        load_file_task(str(two), None, ["text"], "label")


def test_fleet_files_name_themselves_and_their_contradictions(tmp_path):
    from legendfl.fleet.devices import FLEETS

    text = (FLEETS / "jetson.toml").read_text()
    assert "min_mbps = 1.0\nmax_mbps = 30.0" in text
    bad = tmp_path / "f.toml"
    bad.write_text(text.replace("min_mbps = 1.0\nmax_mbps = 30.0", "min_mbps = 50.0\nmax_mbps = 1.0"))
    with pytest.raises(ValueError, match=r"min_mbps \(50.*must not exceed.*max_mbps \(1.*fleet file"):
        load_fleet(str(bad))
    zero = tmp_path / "z.toml"
    zero.write_text(text.replace("[[device_types]]", "[[device_types]]\navailability = 0", 1))
    with pytest.raises(ValueError, match=r"availability must be > 0.*z\.toml"):
        load_fleet(str(zero))


def test_profile_retime_and_eval_adapter_inputs(tmp_path):
    prof = tmp_path / "p.toml"
    prof.write_text("[run\nrounds = 1\n")
    _one_line(*_main("compare", "--profile", str(prof), "--out", str(tmp_path / "o")), str(prof), "not valid TOML")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    (run / "rounds.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n')
    _one_line(*_main("retime", str(run), "--cost-model", "flops", "--out", str(tmp_path / "rt")), "config.json",
              "not valid JSON")
    _one_line(*_main("eval-adapter", str(run)), "not an exported adapter")
    _one_line(*_main("eval-adapter", str(run), "--max-length", "0"), "--max-length")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "labels.json").write_text('["0", "1"]')
    _one_line(*_main("eval-adapter", str(adapter), "--task", "mnli"), "labels ['0', '1']", "mnli")
    for flags, word in ((["--threads", "-2"], "--threads"), (["--threads", "0"], "--threads"),
                        (["--batch-size", "100000"], "--batch-size must be at most 2000")):
        _one_line(*_main("profile", *flags), word)


def test_a_rank_beyond_the_model_is_refused_before_round_1(tmp_path, tiny_bert_dir):
    r = cli("run", "--model", tiny_bert_dir, "--lora-rank", "100000", "--num-devices", "2", "--rounds", "1",
            "--max-examples-per-device", "8", "--max-dev-examples", "8", "--out-dir", str(tmp_path / "r"), timeout=120)
    assert r.returncode == 2 and "lora_rank must be at most 32" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r" / "rounds.jsonl").exists()
    r = cli("profile", "--model", tiny_bert_dir, "--seq-len", "100000", timeout=120)
    assert r.returncode == 2 and "--seq-len must be at most 512" in r.stderr and "Traceback" not in r.stderr


def test_flower_refuses_simulator_only_options_and_reads_a_bad_reply_as_missing():
    from legendfl.runtime.flower.server_app import FederationSettings, run_federation

    for key, value in (("availability", 0.5), ("round_deadline", 10.0)):
        with pytest.raises(ValueError, match=f"{key}: simulator-only"):
            run_federation(None, RunConfig(**{key: value}), FederationSettings())


def test_a_malformed_or_misaddressed_reply_is_a_missing_device():
    from types import SimpleNamespace

    from legendfl.runtime.flower import transport as tr

    class Fed:
        node_of = {0: 10, 1: 11}

        def exchange(self, msgs, timeout):
            return {0: (SimpleNamespace(content="garbage"), 0.1), 1: (SimpleNamespace(content="ok"), 0.1)}, {}

    def decode(content):
        if content == "garbage":
            raise KeyError("params")
        return SimpleNamespace(device_id=0, upload_bytes=0), {"hostname": "h", "busy_s": 0, "setup_s": 0, "train_s": 0}

    t = tr.FlowerTransport.__new__(tr.FlowerTransport)
    t.fed, t.cfg, t.label_names, t.round_timeout_s, t.offline = Fed(), RunConfig(), ["0", "1"], 1.0, {}
    t.clock = tr.VirtualClock("real")
    orig_decode, orig_encode, orig_message = tr.decode_result, tr.encode_task, tr.Message
    tr.decode_result, tr.encode_task, tr.Message = decode, lambda *a: None, lambda *a, **k: None
    try:
        tasks = {d: SimpleNamespace(download_bytes=4) for d in (0, 1)}
        outcome = t.run_round(1, tasks)
    finally:
        tr.decode_result, tr.encode_task, tr.Message = orig_decode, orig_encode, orig_message
    assert outcome.results == [] and set(outcome.missing) == {0, 1}
    assert "KeyError" in outcome.missing[0] and "names device 0" in outcome.missing[1]
