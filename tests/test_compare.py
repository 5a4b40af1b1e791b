"""The comparison command on a tiny configuration (the tiny random BERT: arithmetic and bookkeeping, not learning):
table arithmetic from the records, no re-training on re-run."""
import csv
import json
from pathlib import Path

import pytest

from legendfl.experiments.retiming import retime_run
from legendfl.metrics.comparison import compare_records
from legendfl.metrics.summary import read_records
from legendfl.runtime.run_folder import RunFolder
from conftest import TINY_BERT, cli

TINY = [f"model={TINY_BERT}", "num_devices=3", "rounds=2", "max_local_steps=2", "max_examples_per_device=60", "max_dev_examples=200"]


def _first(records, target):
    return next(r for r in records if r["accuracy"] is not None and r["accuracy"] >= target)


def test_compare_table_matches_records_and_rerun_does_not_retrain(tmp_path):
    out = tmp_path / "cmp"
    r = cli("compare", "--strategies", "legend", "fedlora", "--tasks", "sst2", "--out", str(out), "--set", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    folder = out / "sst2"
    legend, fedlora = read_records(folder / "legend" / "rounds.jsonl"), read_records(folder / "fedlora" / "rounds.jsonl")
    # same fleet trace for both: identical modes and bandwidth draws per device and round
    for a, b in zip(legend, fedlora):
        for d in a["devices"]:
            assert (a["devices"][d]["mode"], a["devices"][d]["uplink_mbps"]) == (b["devices"][d]["mode"], b["devices"][d]["uplink_mbps"])
    finals = [[x for x in rec if x["accuracy"] is not None][-1]["accuracy"] for rec in (legend, fedlora)]
    target = min(finals)
    rows = {row["strategy"]: row for row in csv.DictReader((folder / "table.csv").open())}
    assert float(rows["legend"]["target_accuracy"]) == pytest.approx(target)
    t_l, t_f = _first(legend, target), _first(fedlora, target)
    assert float(rows["fedlora"]["time_to_target_s"]) == pytest.approx(t_f["virtual_time_s"])
    assert float(rows["fedlora"]["speedup"]) == pytest.approx(t_f["virtual_time_s"] / t_l["virtual_time_s"])
    assert float(rows["fedlora"]["traffic_reduction"]) == pytest.approx(1 - t_l["traffic_bytes"] / t_f["traffic_bytes"])
    wait_l = sum(x["mean_waiting_s"] for x in legend) / len(legend)
    wait_f = sum(x["mean_waiting_s"] for x in fedlora) / len(fedlora)
    assert float(rows["fedlora"]["waiting_reduction"]) == pytest.approx(1 - wait_l / wait_f)
    assert float(rows["legend"]["speedup"]) == pytest.approx(1.0)
    for fig in ("fig7_accuracy_vs_time.png", "fig8_time_to_target.png", "fig11_traffic_to_target.png", "fig12_waiting.png"):
        assert (folder / fig).stat().st_size > 5000
    assert "| fedlora |" in (folder / "table.md").read_text()
    # SST-2 has two labels: the run records its chance accuracy, and the protocol's targets lie above it
    assert json.loads((folder / "legend" / "summary.json").read_text())["chance_accuracy"] == 0.5
    assert "grid targets lie above chance, 50.0%" in (folder / "table.md").read_text()
    # a re-run recomputes tables and figures from the records without training again; runs from before
    # summaries recorded the chance accuracy still get targets above it (the shipped task's, from config.json)
    stamp = (folder / "legend" / "rounds.jsonl").stat().st_mtime_ns
    (folder / "table.csv").unlink()
    (folder / "table.md").unlink()
    for name in ("legend", "fedlora"):
        summary = json.loads((folder / name / "summary.json").read_text())
        del summary["chance_accuracy"]
        (folder / name / "summary.json").write_text(json.dumps(summary))
    r2 = cli("compare", "--strategies", "legend", "fedlora", "--tasks", "sst2", "--out", str(out), "--set", *TINY)
    assert r2.returncode == 0 and "not re-run" in r2.stdout
    assert (folder / "legend" / "rounds.jsonl").stat().st_mtime_ns == stamp and (folder / "table.csv").exists()
    assert "grid targets lie above chance, 50.0%" in (folder / "table.md").read_text()


def test_compare_records_arithmetic_by_hand():
    def recs(points):
        return [{"round": i + 1, "accuracy": a, "virtual_time_s": t, "traffic_bytes": b, "mean_waiting_s": w, "round_time_s": 1.0}
                for i, (a, t, b, w) in enumerate(points)]

    runs = {"a": recs([(0.5, 10, 100, 1.0), (0.8, 20, 200, 1.0)]), "b": recs([(0.6, 30, 300, 4.0), (0.7, 60, 500, 2.0)])}
    target, rows = compare_records(runs)
    assert target == 0.7  # the lowest final accuracy
    a, b = rows
    assert (a.time_to_target_s, b.time_to_target_s) == (20, 60)
    assert b.speedup == pytest.approx(3.0) and b.traffic_reduction == pytest.approx(1 - 200 / 500)
    assert b.waiting_reduction == pytest.approx(1 - 1.0 / 3.0)


def test_unknown_profile_is_a_one_line_error(tmp_path):
    r = cli("compare", "--profile", "nope", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "profile must be one of" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # trains 6 runs and re-times 2 (about 17 s)
def test_compare_over_seeds_and_cost_models_retimes_what_ignores_time(tmp_path):
    out = tmp_path / "seeds"
    r = cli("compare", "--strategies", "legend", "fedlora", "--tasks", "sst2", "--seeds", "0", "1",
            "--cost-models", "profile", "flops", "--out", str(out), "--set", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    task = out / "sst2"
    for seed in (0, 1):
        for cost in ("profile", "flops"):
            rec = read_records(task / cost / f"seed-{seed}" / "legend" / "rounds.jsonl")
            assert {x["cost_model"] for x in rec} == {cost} and not any(x.get("retimed") for x in rec)
        retimed = read_records(task / "flops" / f"seed-{seed}" / "fedlora" / "rounds.jsonl")
        assert all(x["retimed"] and x["cost_model"] == "flops" for x in retimed)
        # written as a run's folder: its configuration and the source run's input fingerprint
        source = task / "profile" / f"seed-{seed}" / "fedlora"
        folder = task / "flops" / f"seed-{seed}" / "fedlora"
        assert json.loads((folder / "config.json").read_text())["retimed_from"] == str(source)
        assert (folder / "inputs.json").read_text() == (source / "inputs.json").read_text()
    # a folder that a run is writing (locked) is refused, and nothing is written into it
    with RunFolder(tmp_path / "busy"):
        with pytest.raises(ValueError, match="being written by another process"):
            retime_run(task / "profile" / "seed-0" / "fedlora", tmp_path / "busy", "flops")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [".legendfl.lock"]
    assert r.stdout.count("re-timed under the flops cost model") == 2  # fedlora only; LEGEND's depths read time
    # seeds differ (partition, fleet, init); a seed's strategies share one fleet trace
    p0 = read_records(task / "profile" / "seed-0" / "fedlora" / "rounds.jsonl")
    p1 = read_records(task / "profile" / "seed-1" / "fedlora" / "rounds.jsonl")
    assert [x["virtual_time_s"] for x in p0] != [x["virtual_time_s"] for x in p1]
    # the re-timed FedLoRA equals a FedLoRA really run under the flops model: same clock to the float
    real = tmp_path / "real-flops"
    same = tmp_path / "same.yaml"  # the compared run's own settings (JSON is YAML)
    same.write_text((task / "profile" / "seed-1" / "fedlora" / "config.json").read_text())
    r2 = cli("run", "--config", str(same), "--cost-model", "flops", "--out-dir", str(real))
    assert r2.returncode == 0, r2.stderr[-2000:]
    ran, re = read_records(real / "rounds.jsonl"), read_records(task / "flops" / "seed-1" / "fedlora" / "rounds.jsonl")
    for a, b in zip(ran, re):
        assert a["accuracy"] == b["accuracy"]
        for key in ("virtual_time_s", "round_time_s", "mean_waiting_s", "traffic_bytes"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9)
    # tables: means with ranges (2 seeds) for each cost model, ratios against LEGEND, and the speed-up-vs-target figure
    for cost in ("profile", "flops"):
        table = json.loads((task / cost / "table.json").read_text())
        assert table["seeds"] == [0, 1] and set(table["intervals"]) == {"legend", "fedlora"}
        ref = table["intervals"]["legend"]["speedup_paper"]
        assert ref["mean"] == ref["low"] == ref["high"] == 1.0 and ref["interval"] == "range" and ref["n"] == 2
        finals = [table["per_seed"][str(s)]["strategies"]["fedlora"]["final_accuracy"] for s in (0, 1)]
        assert table["intervals"]["fedlora"]["final_accuracy"]["mean"] == pytest.approx(sum(finals) / 2)
        assert "mean [range] over n = 2 seeds (0, 1; fewer than 5" in (task / cost / "table.md").read_text()
        assert (task / cost / "speedup_vs_target_table.png").stat().st_size > 5000


def test_compare_refuses_unknown_strategy_before_training(tmp_path):
    r = cli("compare", "--strategies", "legend", "nope", "--tasks", "sst2", "--out", str(tmp_path / "x"), "--set", *TINY,
            timeout=120)
    assert r.returncode == 2 and "strategy must be one of" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x" / "sst2" / "legend").exists()


def test_every_shipped_profile_validates_for_each_of_its_tasks_and_strategies(tmp_path):
    from legendfl.experiments.compare import PROFILES, load_profile, run_config

    for path in sorted(PROFILES.glob("*.toml")):
        prof = load_profile(path.stem)
        spec = prof.get("compare", {})
        names = [*spec.get("strategies", []), *spec.get("ablation", [])]
        names += [n for g in ("position", "depth", "rank") for n in spec.get(g, [])]
        assert names, path.stem
        for task in spec["tasks"]:
            for name in names:
                cfg = run_config({**prof["run"], "task": task}, name, tmp_path / name)
                assert cfg.task == task and cfg.strategy


@pytest.mark.slow
@pytest.mark.filterwarnings("error:The PEFT config's")  # the exported adapter names its base as peft does, unrenamed
def test_generative_profile_writes_the_papers_figures_9(tmp_path):
    """`compare --profile generative` on MMLU with the offline default decoder, SmolLM2-135M-Instruct from its GGUF
    package (dequantised Q4_1), shrunk to one short round per strategy."""
    r = cli("compare", "--profile", "generative", "--tasks", "mmlu", "--strategies", "legend", "fedlora",
            "--out", str(tmp_path), "--set", "num_devices=2", "rounds=1", "max_local_steps=1", "max_dev_examples=2",
            "max_examples_per_device=8", "max_length=160", "batch_size=2")
    assert r.returncode == 0, r.stderr[-2000:]
    folder = tmp_path / "mmlu"
    for png in ("fig9a_accuracy_vs_time.png", "fig9b_time_to_target.png"):
        assert (folder / png).stat().st_size > 5000
    rows = {row["strategy"] for row in csv.DictReader((folder / "table.csv").open())}
    assert rows == {"legend", "fedlora"}
    depths = {d["depth"] for d in read_records(folder / "fedlora" / "rounds.jsonl")[0]["devices"].values()}
    assert depths == {30}
    legend = read_records(folder / "legend" / "rounds.jsonl")[0]
    assert legend["accuracy"] is not None and {d["depth"] for d in legend["devices"].values()} == {30}  # all L first
    ranks = legend["devices"]["0"]["ranks"]  # 30 layers at the default budget: ranks still rise towards the output
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    adapter = json.loads((folder / "legend" / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"
    assert (Path(adapter["base_model_name_or_path"]) / "config.json").is_file()  # loadable by from_pretrained as is
    assert json.loads((folder / "legend" / "summary.json").read_text())["chance_accuracy"] == 0.25  # four choices


def test_compare_reuses_only_results_of_the_same_settings(tmp_path):
    """compare.run_strategies reuses a finished run (or resumes a checkpoint) only when its config.json holds the
    settings asked for; otherwise one error naming the differing settings (issue 21). No training here: the
    reused folder is written by hand."""
    from legendfl.experiments.compare import run_config, run_strategies

    base = {"task": "sst2", "num_devices": 3, "rounds": 2, "seed": 0}
    folder = tmp_path / "legend"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(run_config(base, "legend", folder).to_json()))
    (folder / "summary.json").write_text("{}")
    record = {"round": 1, "accuracy": 0.8, "virtual_time_s": 1.0, "traffic_bytes": 1, "mean_waiting_s": 0.0,
              "round_time_s": 1.0}
    (folder / "rounds.jsonl").write_text(json.dumps(record) + "\n")
    assert run_strategies(base, ["legend"], tmp_path) == {"legend": [record]}  # same settings: reused, not re-run
    with pytest.raises(ValueError, match=r"other settings \(differing: lora_rank, seed\)"):
        run_strategies({**base, "seed": 7, "lora_rank": 4}, ["legend"], tmp_path)
    with pytest.raises(ValueError, match=r"differing: strategy_options"):
        run_strategies({**base, "legend.lcd": "literal"}, ["legend"], tmp_path)


def test_compare_target_must_be_an_accuracy(tmp_path):
    r = cli("compare", "--strategies", "legend", "fedlora", "--target", "1.5", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "target must be an accuracy in (0, 1]" in r.stderr and "Traceback" not in r.stderr


def test_retime_refuses_its_own_folder_a_full_folder_and_empty_records(tmp_path):
    """retiming.retime_run never replaces the run it reads, never writes over other files unasked, and
    refuses a run with no rounds (it wrote a summary of nulls before; issue 21)."""
    from legendfl.experiments.compare import run_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(run_config({"task": "sst2", "num_devices": 3}, "fedlora", run).to_json()))
    (run / "rounds.jsonl").write_text("")
    with pytest.raises(ValueError, match="must not be the run folder itself"):
        retime_run(run, run, "flops")
    with pytest.raises(ValueError, match="holds no rounds"):
        retime_run(run, tmp_path / "new", "flops")
    full = tmp_path / "full"
    full.mkdir()
    (full / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds files; choose an empty folder or pass --overwrite"):
        retime_run(run, full, "flops")
    assert (full / "summary.json").read_text() == "{}"
