"""The server side of prune-and-tune (strategies/structure_mask.py) by hand: the cubic sparsity ramp, the next mask
from sample-weighted importance, and element-wise aggregation over the devices that kept each entry (3 devices)."""
import pytest
import torch

from legendfl.strategies.structure_mask import elementwise_average, next_mask, scheduled_sparsity

NAN = float("nan")


def test_the_cubic_ramp_reaches_the_target_and_stays():
    assert scheduled_sparsity(0, 0.5, 10) == 0.0
    assert scheduled_sparsity(5, 0.5, 10) == pytest.approx(0.5 * (1 - 0.5 ** 3))
    assert scheduled_sparsity(10, 0.5, 10) == scheduled_sparsity(25, 0.5, 10) == 0.5
    steps = [scheduled_sparsity(t, 0.5, 10) for t in range(11)]
    assert all(b > a for a, b in zip(steps, steps[1:])) and steps[1] - steps[0] > steps[10] - steps[9]  # fast, then slow


def test_the_next_mask_keeps_the_top_groups_by_weighted_importance_and_one_head_at_least():
    # layer 0: 4 heads; device weights 1, 2, 1; device 3 did not hold head 1 (pruned there)
    reports = [(1.0, {0: torch.tensor([0.9, 0.1, 0.5, 0.2])}),
               (2.0, {0: torch.tensor([0.3, 0.4, 0.6, 0.2])}),
               (1.0, {0: torch.tensor([0.1, NAN, 0.2, 0.9])})]
    # weighted means: head 0 (0.9 + 0.6 + 0.1) / 4 = 0.4; head 1 (0.1 + 0.8) / 3 = 0.3; head 2 (0.5 + 1.2 + 0.2) / 4
    # = 0.475; head 3 (0.2 + 0.4 + 0.9) / 4 = 0.375
    assert next_mask(reports, {0: 4}, sparsity=0.5) == {0: [0, 2]}
    assert next_mask(reports, {0: 4}, sparsity=0.3) == {0: [0, 2, 3]}  # ceil(0.7 * 4) = 3
    assert next_mask(reports, {0: 4}, sparsity=0.99) == {0: [2]}  # at least one
    assert next_mask([(1.0, {0: torch.tensor([0.5, 0.5])})], {0: 2}, 0.5) == {0: [0]}  # ties: the lower index
    with pytest.raises(ValueError, match="sparsity"):
        next_mask(reports, {0: 4}, sparsity=1.0)
    with pytest.raises(ValueError, match="4 entries"):
        next_mask([(1.0, {0: torch.ones(3)})], {0: 4}, 0.5)


def test_each_entry_is_averaged_over_the_devices_that_kept_it():
    previous = {"q.lora_B": torch.full((3, 2), 7.0)}
    ones = torch.ones(3, 2)
    updates = [  # device 0 kept rows 0 and 1, device 1 rows 1 and 2, device 2 row 1 only; weights 1, 3, 2
        (1.0, {"q.lora_B": torch.full((3, 2), 1.0)}, {"q.lora_B": torch.tensor([[1.0], [1.0], [0.0]]) * ones}),
        (3.0, {"q.lora_B": torch.full((3, 2), 2.0)}, {"q.lora_B": torch.tensor([[0.0], [1.0], [1.0]]) * ones}),
        (2.0, {"q.lora_B": torch.full((3, 2), 5.0)}, {"q.lora_B": torch.tensor([[0.0], [1.0], [0.0]]) * ones}),
    ]
    out = elementwise_average(updates, previous)["q.lora_B"]
    assert out[0].tolist() == [1.0, 1.0]  # device 0 alone
    assert out[1].tolist() == pytest.approx([(1 + 6 + 10) / 6] * 2)  # all three, weighted
    assert out[2].tolist() == [2.0, 2.0]  # device 1 alone
    nobody = [(1.0, {"q.lora_B": torch.zeros(3, 2)}, {"q.lora_B": torch.zeros(3, 2)})]
    assert torch.equal(elementwise_average(nobody, previous)["q.lora_B"], previous["q.lora_B"])  # kept as it was
