"""core/group_selection.py: the LoRA entries of kept heads and channels, cut out and put back, checked against a
module pruned by models/pruning.py (the cut LoRA has exactly the pruned module's shape and its entries)."""
import pytest
import torch
from conftest import TINY_BERT
from transformers import AutoModelForSequenceClassification

from legendfl.core.group_selection import GroupSelection
from legendfl.core.strategy import lora_key
from legendfl.models.pruning import prune_encoder


def _full():
    gen = torch.Generator().manual_seed(0)
    return {lora_key(1, "attention.self.query", "A"): torch.randn(4, 32, generator=gen),
            lora_key(1, "attention.self.query", "B"): torch.randn(32, 4, generator=gen),
            lora_key(1, "attention.output.dense", "A"): torch.randn(4, 32, generator=gen),
            lora_key(1, "attention.output.dense", "B"): torch.randn(32, 4, generator=gen),
            lora_key(1, "intermediate.dense", "B"): torch.randn(64, 4, generator=gen),
            lora_key(1, "output.dense", "A"): torch.randn(4, 64, generator=gen),
            lora_key(2, "attention.self.query", "B"): torch.randn(32, 4, generator=gen)}


def test_cut_lora_has_the_pruned_modules_shapes_and_goes_back_where_it_came_from():
    selection = GroupSelection(16, keep_heads={1: (1,)}, keep_channels={1: (0, 5, 9)})
    full = _full()
    cut = selection.restrict(full)
    model = prune_encoder(AutoModelForSequenceClassification.from_pretrained(TINY_BERT),
                          keep_heads={1: [1]}, keep_channels={1: [0, 5, 9]})
    block = model.base_model.encoder.layer[1]
    assert cut["1.attention.self.query.lora_B"].shape[0] == block.attention.self.query.out_features == 16
    assert cut["1.attention.output.dense.lora_A"].shape[1] == block.attention.output.dense.in_features == 16
    assert cut["1.intermediate.dense.lora_B"].shape[0] == block.intermediate.dense.out_features == 3
    assert cut["1.output.dense.lora_A"].shape[1] == block.output.dense.in_features == 3
    for whole in ("1.attention.self.query.lora_A", "1.attention.output.dense.lora_B", "2.attention.self.query.lora_B"):
        assert torch.equal(cut[whole], full[whole])  # the rank side, and layers not named, are whole
    assert torch.equal(cut["1.attention.self.query.lora_B"], full["1.attention.self.query.lora_B"][16:])
    assert torch.equal(cut["1.output.dense.lora_A"], full["1.output.dense.lora_A"][:, [0, 5, 9]])
    back, masks = selection.expand(cut, {k: v.shape for k, v in full.items()})
    for key in full:
        assert torch.equal(back[key], full[key] * masks[key])
    assert masks["1.intermediate.dense.lora_B"][:, 0].tolist() == [float(i in (0, 5, 9)) for i in range(64)]
    assert masks["1.attention.self.query.lora_B"][:, 0].sum() == 16


def test_bad_selections_are_refused():
    with pytest.raises(ValueError, match="keep_heads of layer 0"):
        GroupSelection(16, keep_heads={0: ()})
    with pytest.raises(ValueError, match="keep_channels of layer 2"):
        GroupSelection(16, keep_channels={2: (3, 1)})
    with pytest.raises(ValueError, match="head_size"):
        GroupSelection(0)
