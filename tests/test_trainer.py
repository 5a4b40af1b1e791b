import warnings

import torch

from legendfl.core.lora_layout import LoraLayout
from legendfl.core.strategy import DeviceTask
from legendfl.core.flops import batch_flops
from legendfl.methods.lora import lora_adapter
from legendfl.methods.lora import train_lora
from legendfl.engine.trainer import TrainConfig, local_batches


def _task(backbone, layout, rnd=1, dev=0, lr=1e-3):
    return DeviceTask(dev, rnd, {**backbone.spec.init_lora(layout, 0), **backbone.head_tensors()}, layout, lr=lr)


def test_no_gradient_below_the_shallowest_lora_layer(backbone, sst2_small):
    train, _ = sst2_small
    layout = LoraLayout.top(2, [8] * 6)  # LoRA on layers 4 and 5
    called = set()
    warnings.filterwarnings("ignore", message="Full backward hook")
    blocks = dict(backbone.model.named_modules())[backbone.block_prefix]
    hooks = [blk.register_full_backward_hook(lambda m, gi, go, i=i: called.add(i)) for i, blk in enumerate(blocks)]
    try:
        with lora_adapter(backbone, layout, _task(backbone, layout).params) as model:
            model.train()
            out = model(**train.batch(list(range(8))))
            out.loss.backward()
            lora_grads = {n for n, p in model.named_parameters() if p.grad is not None}
            model.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
    assert called == {4, 5}  # backward ran through layers 4 and 5 only
    assert lora_grads and all(".layer.4." in n or ".layer.5." in n or "classifier" in n for n in lora_grads)
    assert all(p.grad is None for p in backbone.model.parameters())


def test_training_reduces_loss_and_reports_its_work(backbone, sst2_small):
    train, _ = sst2_small
    layout = LoraLayout.top(3, [8] * 6)
    cfg = TrainConfig(batch_size=16, max_local_steps=12, seed=0)
    result = train_lora(backbone, _task(backbone, layout, lr=2e-3), train, list(range(600)), cfg)
    batches = local_batches(list(range(600)), cfg, 0, 1, 0, train.lengths)
    assert result.num_steps == 12 and result.num_examples == sum(len(b) for b in batches) > 10 * 16
    assert result.num_tokens > 12 * 16 * 3
    assert result.work.backward_flops > 0 and result.work.forward_flops > result.work.backward_flops  # depth 3 of 6
    assert result.wall_time_s > 0 and result.measured_backward_s > 0
    assert set(k.split(".")[0] for k in result.params if not k.startswith("head")) == {"3", "4", "5"}
    assert result.upload_bytes == 4 * sum(v.numel() for v in result.params.values())
    # the head and LoRA B moved away from their start
    assert not torch.equal(result.params["5.output.dense.lora_B"], torch.zeros_like(result.params["5.output.dense.lora_B"]))
    # the shared backbone, head included, is back as loaded and frozen
    assert not any(p.requires_grad for p in backbone.model.parameters())
    live = dict(backbone.model.named_parameters())
    assert all(torch.equal(live[k.removeprefix("head.")], v) for k, v in backbone.spec.head.items())


def test_batches_derive_from_seed_round_device(sst2_small):
    train, _ = sst2_small
    cfg = TrainConfig(batch_size=8, max_local_steps=5)
    a = local_batches(list(range(100)), cfg, 0, 1, 2, train.lengths)
    b = local_batches(list(range(100)), cfg, 0, 1, 2, train.lengths)
    c = local_batches(list(range(100)), cfg, 0, 2, 2, train.lengths)
    assert [x.tolist() for x in a] == [x.tolist() for x in b] != [x.tolist() for x in c]
    full = local_batches(list(range(100)), TrainConfig(batch_size=8), 0, 1, 2, train.lengths)
    assert sorted(i for bt in full for i in bt.tolist()) == list(range(100))  # one epoch = every example once


def test_backward_flops_scale_with_depth(backbone):
    spec = backbone.spec
    f6, b6 = batch_flops(spec, LoraLayout.top(6, [8] * 6), 16, 32)
    f2, b2 = batch_flops(spec, LoraLayout.top(2, [8] * 6), 16, 32)
    assert f6 > f2  # LoRA forward on more layers
    assert 2.9 < b6 / b2 < 3.1  # backward through 6 layers vs 2


def test_results_do_not_depend_on_the_order_devices_run_in(backbone, sst2_small):
    """Batches and dropout derive from (seed, round, device): running devices in another order changes nothing."""
    train, _ = sst2_small
    layout = LoraLayout.top(2, [8] * 6)
    cfg = TrainConfig(batch_size=8, max_local_steps=3, seed=5, lora_dropout=0.1)
    parts = {0: list(range(0, 300)), 1: list(range(300, 600))}

    def run(order):
        out = {}
        for dev in order:
            torch.manual_seed(1234 + dev * 7 + len(out))  # disturb the global RNG differently each time
            out[dev] = train_lora(backbone, _task(backbone, layout, rnd=2, dev=dev), train, parts[dev], cfg)
        return out

    a, b = run([0, 1]), run([1, 0])
    for dev in (0, 1):
        assert a[dev].params.keys() == b[dev].params.keys()
        assert all(torch.equal(a[dev].params[k], b[dev].params[k]) for k in a[dev].params)
    assert not torch.equal(a[0].params["5.output.dense.lora_B"], a[1].params["5.output.dense.lora_B"])
