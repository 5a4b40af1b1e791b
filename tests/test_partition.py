import numpy as np
import pytest

from legendfl.data.partition import partition, partition_stats


def test_dirichlet_is_deterministic_complete_and_nonempty(sst2):
    labels = [ex[2] for ex in sst2.train[:5000]]
    a = partition(labels, 20, alpha=10.0, seed=3)
    b = partition(labels, 20, alpha=10.0, seed=3)
    c = partition(labels, 20, alpha=10.0, seed=4)
    assert a == b and a != c
    flat = sorted(i for p in a for i in p)
    assert flat == list(range(5000))  # every example exactly once
    assert all(len(p) >= 1 for p in a)


def test_small_alpha_skews_labels_more_than_iid(sst2):
    labels = [ex[2] for ex in sst2.train[:6000]]

    def skew(parts):
        stats = partition_stats(parts, labels, 2)
        return np.mean([abs(s["label_counts"][1] / s["examples"] - np.mean(labels)) for s in stats])

    assert skew(partition(labels, 10, alpha=0.1, seed=0)) > 3 * skew(partition(labels, 10, scheme="iid", seed=0))


def test_every_device_gets_an_example_even_with_extreme_skew():
    labels = [0] * 30 + [1] * 2
    parts = partition(labels, 30, alpha=0.01, seed=1)
    assert all(len(p) >= 1 for p in parts) and sum(map(len, parts)) == 32


def test_errors_name_the_field():
    with pytest.raises(ValueError, match="num_devices"):
        partition([0, 1, 0], 4)
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        partition([0, 1, 0], 2, alpha=0)
    with pytest.raises(ValueError, match="partition must be one of"):
        partition([0, 1, 0], 2, scheme="zipf")


def test_max_examples_per_device_caps_deterministically(sst2):
    labels = [ex[2] for ex in sst2.train[:3000]]
    p1 = partition(labels, 5, seed=0, max_examples_per_device=50)
    assert all(len(p) == 50 for p in p1) and p1 == partition(labels, 5, seed=0, max_examples_per_device=50)
