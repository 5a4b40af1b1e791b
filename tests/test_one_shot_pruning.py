"""One-shot pruning of a finished run (experiments/one_shot_pruning.py) on the tiny random BERT: at sparsity 0 the
output is the run's own model merged (same accuracy, nothing removed); at 0.5 each layer keeps the groups of
highest reported importance and the saved model loads, pruned, with plain transformers; bad input is refused."""
import json

import pytest
from conftest import TINY_BERT
from transformers import AutoModelForSequenceClassification

from legendfl.config import RunConfig
from legendfl.experiments.evaluate_export import evaluate_exported
from legendfl.experiments.one_shot_pruning import prune_run
from legendfl.experiments.runner import run
from legendfl.models.pruning import structure

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fedlora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedlora")
    run(RunConfig.from_sources({"model": TINY_BERT, "strategy": "fedlora", "num_devices": 3, "rounds": 2,
                                "max_local_steps": 2, "max_examples_per_device": 24, "max_dev_examples": 32,
                                "max_length": 32, "batch_size": 8, "threads": 1, "out_dir": str(out)}))
    return out


@pytest.fixture(scope="module")
def pruned(fedlora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    return out, prune_run(fedlora_run, [0.0, 0.5], out, examples_per_device=16)


def test_at_sparsity_zero_it_is_the_runs_model_merged(fedlora_run, pruned):
    report = pruned[1][0]
    final = json.loads((fedlora_run / "summary.json").read_text())["final_accuracy"]
    assert abs(report["accuracy"] - final) <= 1 / 32 + 1e-9
    assert report["parameters"] == report["dense_parameters"]
    assert report["structure"] == {str(layer): [2, 64] for layer in range(6)}


def test_at_half_each_layer_keeps_its_most_important_groups(pruned):
    out, (dense, report) = pruned
    assert report["importance"] == dense["importance"]  # one scoring for every sparsity
    for kind, n in (("heads", 1), ("channels", 32)):
        for layer, scores in report["importance"][kind].items():
            assert len(set(scores)) == len(scores)  # no ties: the order below is the rule's
            top = sorted(sorted(range(len(scores)), key=lambda g: -scores[g])[:n])
            assert report["kept"][kind][layer] == top
    loaded = AutoModelForSequenceClassification.from_pretrained(out / "pruned-s50")
    assert structure(loaded) == {layer: (1, 32) for layer in range(6)}
    assert report["parameters"] == sum(p.numel() for p in loaded.parameters()) < report["dense_parameters"]
    assert evaluate_exported(str(out / "pruned-s50"), "sst2", max_length=32, max_dev_examples=32) == report["accuracy"]
    assert sorted(p.name for p in (out / "pruned-s50").iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]


def test_bad_input_is_refused_naming_it(fedlora_run, tmp_path):
    with pytest.raises(ValueError, match=r"--sparsity must be in \[0, 1\)"):
        prune_run(fedlora_run, [0.3, 1.0], tmp_path / "x")
    with pytest.raises(ValueError, match="at least one value"):
        prune_run(fedlora_run, [], tmp_path / "x")
    with pytest.raises(ValueError, match="--examples-per-device"):
        prune_run(fedlora_run, [0.3], tmp_path / "x", examples_per_device=0)
    with pytest.raises(ValueError, match="must be a folder of its own"):
        prune_run(fedlora_run, [0.3], fedlora_run)
    with pytest.raises(ValueError, match="holds no exported LoRA adapter"):
        prune_run(tmp_path, [0.3], tmp_path / "x")
