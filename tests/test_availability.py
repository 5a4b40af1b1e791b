"""Unavailable and late devices in the simulator: every strategy survives them, records say who and why.
The tiny random BERT (conftest.py): nothing here depends on learning."""
import json

import pytest
from conftest import TINY_BERT

from legendfl.config import RunConfig
from legendfl.fleet.availability import Availability, load_trace
from legendfl.fleet.devices import load_fleet
from legendfl.metrics.summary import read_records
from legendfl.experiments.runner import run

SMALL = {"model": TINY_BERT, "num_devices": 5, "rounds": 3, "max_local_steps": 2, "max_examples_per_device": 32, "max_dev_examples": 32,
         "max_length": 32, "validation_examples": 30, "fedadapter.window": 1}


def test_availability_draws_are_seeded_per_round_and_device_and_follow_the_probability(tmp_path):
    fleet = load_fleet("jetson", 40, seed=0)
    a, b = Availability(fleet, seed=3, probability=0.7), Availability(fleet, seed=3, probability=0.7)
    draws = [[a.online(d, r) for d in range(40)] for r in range(1, 51)]
    assert draws == [[b.online(d, r) for d in range(40)] for r in range(1, 51)]
    share = sum(map(sum, draws)) / (40 * 50)
    assert 0.65 < share < 0.75
    assert all(Availability(fleet, 0).online(d, 1) for d in range(40))  # the jetson file says nothing: always on
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"0": [1, 0], "3": [0]}))
    t = Availability(fleet, 0, trace=load_trace(str(trace), 40))
    assert [t.online(0, r) for r in (1, 2, 3, 4)] == [True, False, True, False] and not t.online(3, 7) and t.online(1, 2)
    for text, message in [("[1, 2]", "JSON object"), ('{"99": [1]}', "device ids must be integers in [0, 39]"),
                          ('{"0": [2]}', "non-empty list of 0/1"), ("{", "must be a JSON object")]:
        trace.write_text(text)
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_trace(str(trace), 40)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["legend", "fedlora", "hetlora", "fedadapter", "full"])
def test_every_strategy_survives_offline_and_late_devices(tmp_path, strategy):
    cfg = RunConfig.from_sources(SMALL, {"strategy": strategy, "availability": 0.7, "round_deadline_median": 1.2,
                                         "out_dir": str(tmp_path)})
    summary = run(cfg)
    records = read_records(tmp_path / "rounds.jsonl")
    assert len(records) == 3 and summary["final_accuracy"] is not None
    reasons = [m["reason"] for rec in records for m in rec["missing"]]
    assert any(r.startswith("offline") for r in reasons) and any(r.startswith("late") for r in reasons)
    for rec in records:
        answered, missing = set(rec["devices"]), {str(m["device"]) for m in rec["missing"]}
        assert answered.isdisjoint(missing) and answered | missing <= {str(d) for d in range(5)}
        # a late or offline device's update is not in the aggregate: the strategy folded exactly those that answered
        assert rec["aggregation"].get("aggregated_devices", 0) == len(answered), rec["aggregation"]
        late = [m for m in rec["missing"] if m["reason"].startswith("late")]
        if late:  # the round waited until the deadline; the late devices' bytes are in its traffic
            assert rec["round_time_s"] >= max(d["total_s"] for d in rec["devices"].values())
            assert rec["round_uplink_bytes"] > sum(d["upload_bytes"] for d in rec["devices"].values())


@pytest.mark.slow
def test_a_round_where_nobody_answers_leaves_the_global_model_unchanged(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({str(d): [1, 0, 1] for d in range(5)}))  # everyone offline in round 2
    cfg = RunConfig.from_sources(SMALL, {"strategy": "legend", "availability_trace": str(trace), "out_dir": str(tmp_path / "o")})
    run(cfg)
    records = read_records(tmp_path / "o" / "rounds.jsonl")
    assert records[1]["devices"] == {} and records[1]["aggregation"] == {"skipped": "no device answered"}
    assert len(records[1]["missing"]) == 5 and records[1]["round_time_s"] == 0
    assert records[1]["accuracy"] == records[0]["accuracy"] and records[1]["eval_loss"] == records[0]["eval_loss"]
    assert records[2]["devices"]  # LEGEND kept its estimates and went on
