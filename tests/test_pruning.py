"""Structured pruning (models/pruning.py) on the tiny random BERT: whole heads and FFN channels really leave the
modules (parameters and a forward's multiply-adds, counted by hand), LoRA merged into a pruned model gives the
logits of the unmerged one, and a pruned model saved loads pruned with plain transformers."""
import pytest
import torch
from conftest import TINY_BERT, linear_macs
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

from legendfl.models.pruning import prune_encoder, pruned_config_for_export, structure

HIDDEN, HEADS, FFN, LAYERS = 32, 2, 64, 6  # conftest.tiny_bert
HEAD = HIDDEN // HEADS


def _model():
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(TINY_BERT, num_labels=2).eval()


def _inputs():
    return {"input_ids": torch.randint(1000, 2000, (3, 12), generator=torch.Generator().manual_seed(1)),
            "attention_mask": torch.ones(3, 12, dtype=torch.long)}


def test_pruned_groups_leave_the_modules_by_the_hand_count():
    model = _model()
    inputs = _inputs()
    params, macs = sum(p.numel() for p in model.parameters()), linear_macs(model, inputs)
    prune_encoder(model, keep_heads={1: [1], 4: [0]}, keep_channels={2: range(16), 5: [0, 3, 7]})
    assert structure(model) == {0: (2, 64), 1: (1, 64), 2: (2, 16), 3: (2, 64), 4: (1, 64), 5: (2, 3)}
    per_head = 3 * (HIDDEN * HEAD + HEAD) + HEAD * HIDDEN  # q, k, v rows with biases; the output's columns
    per_channel = (HIDDEN + 1) + HIDDEN  # the intermediate row with its bias; the output column
    removed = 2 * per_head + (48 + 61) * per_channel
    assert params - sum(p.numel() for p in model.parameters()) == removed
    tokens = 3 * 12
    removed_macs = tokens * (2 * 4 * HIDDEN * HEAD + (48 + 61) * 2 * HIDDEN)
    assert macs - linear_macs(model, inputs) == removed_macs


def test_lora_merged_into_a_pruned_model_gives_the_unmerged_logits():
    model = prune_encoder(_model(), keep_heads={0: [0], 3: [1]}, keep_channels={l: range(40) for l in range(LAYERS)})
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense", "output.dense"],
                        init_lora_weights=False)  # random B too: the LoRA really changes the output
    peft_model = get_peft_model(model, config).eval()
    inputs = _inputs()
    with torch.no_grad():
        unmerged = peft_model(**inputs).logits
        with peft_model.disable_adapter():
            plain = peft_model(**inputs).logits
        merged = peft_model.merge_and_unload()(**inputs).logits
    assert not torch.allclose(unmerged, plain, atol=1e-4)
    assert torch.allclose(merged, unmerged, atol=1e-5), (merged - unmerged).abs().max()


def test_a_pruned_model_saved_loads_pruned_with_plain_transformers(tmp_path):
    model = prune_encoder(_model(), keep_heads={2: [1]}, keep_channels={l: range(0, 64, 2) for l in range(LAYERS)})
    pruned_config_for_export(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert structure(loaded) == structure(model)
    inputs = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-6)


def test_bad_keeps_are_refused_naming_what_is_wrong():
    with pytest.raises(ValueError, match="heads of layer 1: keep at least one"):
        prune_encoder(_model(), keep_heads={1: []})
    with pytest.raises(ValueError, match=r"channels of layer 0 must be in \[0, 63\]"):
        prune_encoder(_model(), keep_channels={0: [64]})
    with pytest.raises(ValueError, match="names layer 6"):
        prune_encoder(_model(), keep_heads={6: [0]})
    model = prune_encoder(_model(), keep_heads={1: [1]})
    with pytest.raises(ValueError, match=r"\[0\] were pruned already"):
        prune_encoder(model, keep_heads={1: [0]})
    with pytest.raises(ValueError, match="same number of FFN channels"):
        pruned_config_for_export(prune_encoder(_model(), keep_channels={0: [1, 2]}))
    with pytest.raises(ValueError, match="BERT-family encoders"):
        prune_encoder(torch.nn.Linear(2, 2))
