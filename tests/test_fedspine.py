"""FedSpine-style prune-and-tune (strategies/fedspine.py) end to end on the tiny random BERT: the mask ramps to the
target sparsity and stays there, each device trains the pruned model its bandit's arm gives it, the global model
is evaluated pruned; bad options are refused naming the field."""
import json

import pytest
from conftest import TINY_BERT

from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoModelForSequenceClassification

from legendfl.config import RunConfig
from legendfl.experiments.evaluate_export import evaluate_exported
from legendfl.experiments.runner import run
from legendfl.metrics.summary import read_records
from legendfl.models.pruning import structure


@pytest.mark.slow
def test_a_fedspine_run_prunes_to_the_target_and_its_devices_train_their_arms(tmp_path):
    cfg = RunConfig.from_sources({"model": TINY_BERT, "strategy": "fedspine", "fedspine.sparsity": 0.5,
                                  "fedspine.ramp": 0.5, "num_devices": 3, "rounds": 4, "max_local_steps": 2,
                                  "max_examples_per_device": 24, "max_dev_examples": 32, "max_length": 32,
                                  "batch_size": 8, "threads": 1, "out_dir": str(tmp_path)})
    run(cfg)
    records = read_records(tmp_path / "rounds.jsonl")
    sparsity = [r["aggregation"]["sparsity"] for r in records]
    # the cubic ramp over the first 2 of 4 rounds: 0.5 * (1 - 0.5^3) = 0.4375 after round 1, 0.5 after round 2;
    # with 2 heads and 64 channels per layer the mask keeps ceil((1 - s) n) of each: 2 heads and 36 channels,
    # then 1 head and 32 channels
    assert sparsity == [round(1 - (6 * (2 + 36)) / (6 * 66), 4), 0.5, 0.5, 0.5]
    for r in records:
        for dev, entry in r["devices"].items():
            step, rank = r["aggregation"]["arms"][dev]
            assert entry["ranks"] == [rank] * 6 and entry["depth"] == 6
            assert all(1 <= h <= 2 for h in entry["heads"].values())
    first = records[0]["devices"]  # round 1: every device's arm has the same rank order (first arms of each bandit)
    assert {tuple(r["aggregation"]["arms"][d]) for r in records[:1] for d in first} == {(0.0, 2)}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_sparsity"] == 0.5 and summary["final_accuracy"] is not None
    # the export: the global model pruned to the final mask, LoRA merged, loaded by plain transformers alone
    assert not (tmp_path / "adapter").exists()
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned_model")
    assert structure(exported) == {layer: (1, 32) for layer in range(6)}  # 1 of 2 heads, 32 of 64 channels
    assert not any(isinstance(m, BaseTunerLayer) for m in exported.modules())  # merged: no LoRA modules left
    accuracy = evaluate_exported(str(tmp_path / "pruned_model"), "sst2", max_length=32, max_dev_examples=32)
    assert abs(accuracy - summary["final_accuracy"]) <= 1 / 32 + 1e-9


@pytest.mark.parametrize("options,field", [({"fedspine.sparsity": 1.0}, "fedspine.sparsity"),
                                           ({"fedspine.ranks": []}, "fedspine.ranks"),
                                           ({"fedspine.ratio_steps": [1.5]}, "fedspine.ratio_steps")])
def test_bad_options_are_refused_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        RunConfig.from_sources({"strategy": "fedspine", **options}).strategy_options_resolved()


def test_its_list_options_are_flags_and_listed_with_their_defaults(capsys):
    from legendfl.cli import build_config, main, make_parser

    cfg = build_config(make_parser().parse_args(["run", "--strategy", "fedspine", "--fedspine.ratio-steps", "0", "0.25",
                                                 "--fedspine.ranks", "2", "4"]))
    options = cfg.strategy_options_resolved()
    assert (options.ratio_steps, options.ranks) == ([0.0, 0.25], [2, 4])
    assert main(["strategies"]) == 0
    listed = capsys.readouterr().out
    assert "(default: [0.0, 0.1, 0.2])" in listed and "MISSING" not in listed
