"""End-to-end runs through the CLI on real data: the real model where the run must learn or its export reload (the
LEGEND run), the tiny random BERT (conftest.py) where only the output's form is checked."""
import json

import pytest
from conftest import TINY_BERT, check_records, cli

from legendfl.metrics.summary import read_records

pytestmark = pytest.mark.xdist_group("end_to_end")  # one worker: the LEGEND run is made once for the module (pytest -n)


@pytest.fixture(scope="session")  # not "module": a worker that runs another module's test in between keeps it
def legend_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("legend")
    r = cli("run", "--config", "configs/default.toml", "--num-devices", "6", "--rounds", "2", "--max-local-steps", "4",
            "--max-examples-per-device", "200", "--max-dev-examples", "300", "--out-dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


@pytest.mark.slow
def test_legend_run_writes_records_summary_plots_and_adapter(legend_run):
    out, stdout = legend_run
    records = read_records(out / "rounds.jsonl")
    assert len(records) == 2
    check_records(records)
    assert records[0]["strategy"] == "legend"
    # round 1: all L = 6 layers for all (no estimate yet: FedLoRA's configuration); then LCD gives per-device depths
    assert {d["depth"] for d in records[0]["devices"].values()} == {6}
    later = [d["depth"] for d in records[1]["devices"].values()]
    assert max(later) == 6 and min(later) < 6  # the fastest trains all layers, slower ones fewer
    ranks = records[1]["devices"]["0"]["ranks"]
    assert ranks == sorted(ranks)
    # only the layers a device trains travel: downlink bytes grow with depth
    devs = records[1]["devices"].values()
    by_depth = {d["depth"]: d["download_bytes"] for d in devs}
    assert all(by_depth[a] < by_depth[b] for a in by_depth for b in by_depth if a < b)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] == records[-1]["accuracy"]
    assert summary["time_to_target_s"] is not None and summary["mean_waiting_s"] >= 0
    for png in ("accuracy_vs_time.png", "traffic_vs_accuracy.png", "timeline_round_2.png"):
        assert (out / png).stat().st_size > 5000
    assert (out / "adapter" / "adapter_config.json").exists()
    assert "summary:" in stdout


@pytest.mark.slow
def test_exported_adapter_reproduces_accuracy_in_a_fresh_process(legend_run):
    out, _ = legend_run
    final = read_records(out / "rounds.jsonl")[-1]["accuracy"]
    r = cli("eval-adapter", str(out / "adapter"), "--task", "sst2", "--max-dev-examples", "300", process=True)  # stdout: JSON alone
    assert r.returncode == 0, r.stderr[-2000:]
    assert abs(json.loads(r.stdout)["accuracy"] - final) <= 1 / 300 + 1e-9  # one example at most (batch padding)


@pytest.mark.slow
def test_fedlora_run_same_schema(tmp_path):
    r = cli("run", "--strategy", "fedlora", "--num-devices", "3", "--rounds", "1", "--max-local-steps", "2",
            "--max-examples-per-device", "100", "--model", TINY_BERT, "--max-dev-examples", "32", "--out-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    records = read_records(tmp_path / "rounds.jsonl")
    check_records(records)
    assert {d["depth"] for d in records[0]["devices"].values()} == {6}
    assert {tuple(d["ranks"]) for d in records[0]["devices"].values()} == {(8,) * 6}


@pytest.mark.slow
def test_user_tsv_with_string_labels_and_four_classes(tmp_path):
    rows = ["text\tlabel"]
    words = {"sports": "the team won the match", "politics": "the senate passed the bill",
             "science": "the cell divides under the microscope", "music": "the band played a loud song"}
    for i in range(40):
        for label, text in words.items():
            rows.append(f"{text} number {i}\t{label}")
    data = tmp_path / "mine.tsv"
    data.write_text("\n".join(rows) + "\n")
    r = cli("run", "--data-file", str(data), "--num-devices", "4", "--rounds", "2", "--max-local-steps", "3",
            "--strategy", "fedlora", "--model", TINY_BERT, "--out-dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    labels = json.loads((tmp_path / "out" / "adapter" / "labels.json").read_text())
    assert labels == ["music", "politics", "science", "sports"]
    assert read_records(tmp_path / "out" / "rounds.jsonl")[-1]["accuracy"] is not None


@pytest.mark.parametrize("args, field", [
    (["--task", "imdb"], "task must be one of"),
    (["--lora-rank", "0"], "lora_rank must be >= 1"),
    (["--initial-depth", "9"], "legend.initial_depth must be in [1, 6]"),
    (["--legend.initial-depth", "9"], "legend.initial_depth must be in [1, 6]"),
    (["--hetlora.r-min", "0", "--strategy", "hetlora"], "hetlora.r_min must be >= 1"),
    (["--strategy", "fedavg"], "strategy must be one of"),
    (["--num-devices", "100000"], "num_devices (100000) must not exceed"),
    (["--data-file", "MISSING"], "data_file 'MISSING' does not exist"),
    (["--data-file", "COLS", "--text-columns", "text", "--dev-file", "MISSING"], "dev_file 'MISSING' does not exist"),
    (["--data-file", "COLS", "--text-columns", "sentence"], "column 'sentence'"),
    (["--data-file", "EMPTY"], "is empty"),
])
def test_bad_input_exits_with_one_line_naming_the_field(tmp_path, args, field):
    cols = tmp_path / "cols.tsv"
    cols.write_text("text\tlabel\na b\tx\nc d\ty\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    args = [str(cols) if a == "COLS" else str(empty) if a == "EMPTY" else a for a in args]
    r = cli("run", *args, "--out-dir", str(tmp_path / "o"), timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("legendfl: error:")]
    assert len(lines) == 1 and field in lines[0], r.stderr


def test_help_explains_every_option():
    r = cli("run", "--help", timeout=60)
    assert r.returncode == 0
    for flag in ("--rank-budget", "--rank-step", "--ema", "--fleet", "--dirichlet-alpha", "--max-local-steps",
                 "--legend.rank-step", "--hetlora.r-min", "--fedadapter.window", "--max-grad-norm", "--lora-dropout",
                 "--bf16", "--group-by-length"):
        assert flag in r.stdout
