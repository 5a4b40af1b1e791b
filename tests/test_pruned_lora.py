"""Client method "pruned-lora" (methods/pruned_lora.py) on the tiny random BERT: a device trains LoRA on a pruned
copy of the model, uploads the LoRA of its kept entries only, leaves the shared model whole, counts the FLOPs
of the pruned shapes (checked against the multiply-adds that really ran), and its task travels over Flower."""
import torch
from conftest import TINY_BERT, linear_macs

from legendfl.core.flops import batch_work
from legendfl.core.group_selection import GroupSelection
from legendfl.core.lora_layout import LoraLayout
from legendfl.core.strategy import DeviceTask, tensors_bytes
from legendfl.engine.trainer import TrainConfig
from legendfl.methods.base import get_method
from legendfl.methods.pruned_lora import pruned_batch_work
from legendfl.models.backbone import load_backbone
from legendfl.models.tokenized import TokenizedData
from legendfl.strategies.structure_mask import GroupImportance, PrunedLoraConfig

HEAD = 16


def test_a_pruned_device_trains_uploads_its_kept_entries_and_counts_the_pruned_flops(sst2):
    backbone = load_backbone(TINY_BERT, num_labels=2, seed=0)
    shared = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    layout = LoraLayout({l: 4 for l in range(6)}, 6)
    selection = GroupSelection(HEAD, keep_heads={l: (l % 2,) for l in range(6)},
                               keep_channels={l: tuple(range(0, 64, 2)) for l in range(6)})
    full = {**backbone.spec.init_lora(layout, 0), **backbone.head_tensors()}
    task = DeviceTask(0, 1, selection.restrict(full), PrunedLoraConfig(layout, selection), "pruned-lora", 1e-3,
                      local_terms=(GroupImportance(),))
    data = TokenizedData(backbone.tokenizer, sst2.train[:16], 24)
    method = get_method("pruned-lora")
    result = method.train(task, backbone, data, list(range(16)), TrainConfig(batch_size=8, max_local_steps=2))
    assert result.metrics["group_importance"]["heads"]["0"] and len(result.metrics["group_importance"]["heads"]["0"]) == 1
    assert {k: tuple(v.shape) for k, v in result.params.items()} == {k: tuple(v.shape) for k, v in task.params.items()}
    assert result.upload_bytes < tensors_bytes(full)  # only the kept entries travel
    # priced upload: the kept LoRA entries and head, plus a float32 importance score per kept head and channel
    assert result.work.upload_bytes == result.upload_bytes + 4 * 6 * (1 + 32)
    assert any(not torch.equal(result.params[k], task.params[k]) for k in task.params if k.endswith("lora_B"))
    assert all(torch.equal(v, shared[k]) for k, v in backbone.model.state_dict().items())  # the shared model is whole

    # FLOPs of a batch: twice the multiply-adds of every linear module that ran (pruned layers, LoRA pairs, head),
    # plus attention scores and mixing over the kept heads' dimensions
    batch = data.batch([0, 1, 2])
    seqs, width = batch["input_ids"].shape
    with method.inject(backbone, task, TrainConfig(), train=False) as model:
        macs = linear_macs(model, {k: v for k, v in batch.items() if k != "labels"})
    attention = 6 * seqs * width * 4.0 * width * HEAD  # one head kept per layer
    counted = method.flops(backbone, task)(seqs, width)
    assert counted.forward == 2.0 * macs + attention
    whole = get_method("lora").flops(backbone, DeviceTask(0, 1, full, layout))(seqs, width)
    assert counted.forward < 0.6 * whole.forward and counted.backward < whole.backward
    nothing_pruned = pruned_batch_work(backbone.spec, layout, GroupSelection(HEAD), seqs, width)
    assert nothing_pruned == batch_work(backbone.spec, layout, seqs, width)  # the same count as core.flops


def test_the_pruned_task_travels_over_flower_as_it_is():
    from legendfl.runtime.flower.messages import decode_task, encode_task

    config = PrunedLoraConfig(LoraLayout({4: 2, 5: 4}, 6), GroupSelection(HEAD, {5: (1,)}, {4: (0, 3)}))
    task = DeviceTask(2, 3, {}, config, "pruned-lora", local_terms=(GroupImportance(0.8),))
    back = decode_task(encode_task(task, {}, []))[0]
    assert (back.config, back.local_terms, back.method) == (config, task.local_terms, "pruned-lora")
