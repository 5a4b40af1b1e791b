"""A device's head and channel importance (engine/group_importance.py, the local term of strategies.structure_mask)
on the tiny random BERT: a head or channel whose weights are zero scores zero, the others more, and every layer
that carries LoRA reports one score per head and per channel."""
import pytest
import torch
from conftest import TINY_BERT

from legendfl.core.lora_layout import LoraLayout
from legendfl.core.strategy import DeviceTask
from legendfl.engine.trainer import TrainConfig
from legendfl.methods.lora import train_lora
from legendfl.models.backbone import load_backbone
from legendfl.models.tokenized import TokenizedData
from legendfl.strategies.structure_mask import GroupImportance

HEAD = 16  # conftest.tiny_bert: 32 wide, 2 heads


def test_a_zeroed_head_and_channel_score_zero_and_the_others_more(sst2):
    backbone = load_backbone(TINY_BERT, num_labels=2, seed=0)
    block = backbone.model.base_model.encoder.layer[5]
    with torch.no_grad():  # head 1 and FFN channel 7 of layer 5 are dead: all their weights zero
        for module in (block.attention.self.query, block.attention.self.key, block.attention.self.value):
            module.weight[HEAD:] = 0
            module.bias[HEAD:] = 0
        block.attention.output.dense.weight[:, HEAD:] = 0
        block.intermediate.dense.weight[7] = 0
        block.intermediate.dense.bias[7] = 0
        block.output.dense.weight[:, 7] = 0
    data = TokenizedData(backbone.tokenizer, sst2.train[:32], 32)
    layout = LoraLayout({4: 4, 5: 4}, 6)
    task = DeviceTask(0, 1, backbone.spec.init_lora(layout, 0), layout, "lora", 1e-3,
                      local_terms=(GroupImportance(smoothing=0.5),))
    one_step = train_lora(backbone, task, data, list(range(32)), TrainConfig(batch_size=8, max_local_steps=1))
    first = one_step.metrics["group_importance"]  # LoRA's B starts at zero: a dead group's merged weight is zero
    assert first["heads"]["5"][1] == 0.0 < first["heads"]["5"][0]
    assert first["channels"]["5"][7] == 0.0 < min(s for i, s in enumerate(first["channels"]["5"]) if i != 7)
    result = train_lora(backbone, task, data, list(range(32)), TrainConfig(batch_size=8, max_local_steps=3))
    scores = result.metrics["group_importance"]
    assert sorted(scores["heads"]) == sorted(scores["channels"]) == ["4", "5"]  # the layers that carry LoRA
    assert all(len(v) == 2 for v in scores["heads"].values()) and all(len(v) == 64 for v in scores["channels"].values())
    # after the first step LoRA's B is no longer zero, so a dead group's merged weight is B A there: small, not zero
    live_channels = [s for i, s in enumerate(scores["channels"]["5"]) if i != 7]
    assert scores["heads"]["5"][1] < 0.05 * scores["heads"]["5"][0]
    assert scores["channels"]["5"][7] < 0.05 * min(live_channels), (scores["channels"]["5"][7], min(live_channels))
    assert min(scores["heads"]["4"]) > 0


def test_the_term_is_refused_by_other_methods_and_checks_its_smoothing():
    from legendfl.engine.local_terms import implement

    with pytest.raises(ValueError, match="not supported by client method 'adapter'"):
        implement(GroupImportance(), "adapter")
    with pytest.raises(ValueError, match="smoothing"):
        GroupImportance(smoothing=1.0)
