"""The comparison command on a tiny configuration: table arithmetic from the records, no re-training on re-run."""
import csv

import pytest

from legendfl.compare import compare_records
from legendfl.metrics.summary import read_records
from test_end_to_end import cli

TINY = ["num_devices=3", "rounds=2", "max_local_steps=2", "max_examples_per_device=60", "max_dev_examples=200"]


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
    # a re-run recomputes tables and figures from the records without training again
    stamp = (folder / "legend" / "rounds.jsonl").stat().st_mtime_ns
    (folder / "table.csv").unlink()
    r2 = cli("compare", "--strategies", "legend", "fedlora", "--tasks", "sst2", "--out", str(out), "--set", *TINY)
    assert r2.returncode == 0 and "not re-run" in r2.stdout
    assert (folder / "legend" / "rounds.jsonl").stat().st_mtime_ns == stamp and (folder / "table.csv").exists()


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
