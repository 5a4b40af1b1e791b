"""The batched engine's parts against the algebra by hand: the rank banks' stacked LoRA deltas and their gradients,
every device's loss from one per-example loss, one AdamW step for every device (BankAdamW) against each device's
own optimizer, and the counter-based dropout masks. The whole engine against peft: ``test_batched_engine.py``."""
import pytest
import torch

from conftest import relative_error


def test_stacked_lora_deltas_equal_each_devices_own_and_keep_gradients_apart():
    """The rank banks' batched matmul path (devices with equal rows, ranks zero-padded to the largest) against
    per-device LoRA by hand, in float64 so that the comparison checks the algebra, not one CPU's fp32 summation
    order; each device's gradient lands in its own corner of the bank, and none in the padding."""
    from legendfl.engine.batched_lora import BatchedLoraLinear
    from legendfl.engine.device_rows import DeviceRows, Segment
    from legendfl.engine.parameter_bank import ParameterBank, accumulating_in_place

    gen = torch.Generator().manual_seed(0)
    base = torch.nn.Linear(16, 12, dtype=torch.float64)
    rows = DeviceRows([0, 1, 2])
    ranks = {0: 2, 1: 4, 2: 3}
    bank = ParameterBank(3, {"A": (4, 16), "B": (12, 4)}, "cpu", torch.float64)
    module = BatchedLoraLinear(base, rows, 2.0, 0.0, bank.parts["A"], bank.parts["B"], ranks)
    pairs = [(torch.randn(r, 16, generator=gen, dtype=torch.float64).requires_grad_(),
              torch.randn(12, r, generator=gen, dtype=torch.float64).requires_grad_()) for r in ranks.values()]
    for s, (a, b) in enumerate(pairs):
        bank.load("A", s, a.detach()), bank.load("B", s, b.detach())
    x = torch.randn(6, 5, 16, generator=gen, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="outside a step"):  # no segments but those of the running step
        module(x)
    with rows.step([Segment(0, 0, 2, 5), Segment(1, 2, 4, 3), Segment(2, 4, 6, 5)]):
        assert module.stackable(x)
        out = module(x)
    expected = torch.cat([base(x[2 * s:2 * s + 2]) + 2.0 * (x[2 * s:2 * s + 2] @ a.T @ b.T) for s, (a, b) in enumerate(pairs)])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    with accumulating_in_place():  # as the engine does: the parts' gradients are views of the bank's
        (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for s, (a, b) in enumerate(pairs):
        r = ranks[s]
        torch.testing.assert_close(bank.parts["A"].grad[s, :r], a.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bank.parts["B"].grad[s, :, :r], b.grad, rtol=1e-12, atol=1e-12)
        assert not bank.parts["A"].grad[s, r:].any() and not bank.parts["B"].grad[s, :, r:].any()  # the padding
    # rows of unequal counts, a device without a pair here in the batch: the padded path, the same algebra
    with rows.step([Segment(0, 0, 1, 5), Segment(2, 1, 4, 5), Segment(1, 4, 6, 5)]):
        del module.ranks[1]
        assert not module.stackable(x)
        out = module(x)
    a0, b0 = pairs[0]
    a2, b2 = pairs[2]
    expected = torch.cat([base(x[:1]) + 2.0 * (x[:1] @ a0.T @ b0.T), base(x[1:4]) + 2.0 * (x[1:4] @ a2.T @ b2.T), base(x[4:])])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_every_devices_loss_at_once_equals_each_devices_own(causal):
    """The per-device losses from one per-example (per-token) loss and segment sums equal transformers' loss on each
    device's rows alone (classification: the mean over its examples; causal: over its counted answer tokens,
    -100 ignored), and so do their gradients."""
    from legendfl.engine.batched_training import _device_loss, _device_losses
    from legendfl.engine.device_rows import Segment

    gen = torch.Generator().manual_seed(2)
    segments = [Segment(0, 0, 3, 7), Segment(1, 3, 4, 7), Segment(2, 4, 9, 7)]
    shape = (9, 7, 11) if causal else (9, 4)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    if causal:  # prompts and padding are not counted; device 1's one example counts a single answer token
        labels[:, :3] = -100
        labels[3, :] = -100
        labels[3, 5] = 4
        # the logits at the positions some row's next token counts, and the targets there (answer_logits)
        from transformers.loss.loss_utils import ForCausalLMLoss

        from legendfl.engine.answer_logits import answer_targets

        keep, targets = answer_targets(labels)
        assert keep.tolist() == [2, 3, 4, 5] and (targets[3] != -100).sum() == 1  # the last position predicts nothing
        own = [ForCausalLMLoss(logits[g.start:g.stop], labels[g.start:g.stop], shape[-1]) for g in segments]
        logits, labels = logits[:, keep], targets
    # a causal loss reduces in fp32 whatever the logits' dtype (transformers' ForCausalLMLoss does too)
    tolerance = {"rtol": 1e-6, "atol": 1e-7} if causal else {"rtol": 1e-12, "atol": 1e-15}
    together = _device_losses(logits, labels, segments, causal)
    alone = torch.stack([_device_loss(logits[g.start:g.stop], labels[g.start:g.stop], causal) for g in segments])
    torch.testing.assert_close(together, alone, **tolerance)
    if causal:  # transformers' loss on every position's logits: the same
        torch.testing.assert_close(alone, torch.stack(own), **tolerance)
    weights = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    (grad_together,) = torch.autograd.grad((together * weights).sum(), logits)
    (grad_alone,) = torch.autograd.grad((alone * weights).sum(), logits)
    torch.testing.assert_close(grad_together, grad_alone, **tolerance)


def test_one_adamw_step_for_every_device_equals_each_devices_own_optimizer():
    """BankAdamW against clip_grad_norm_ + torch.optim.AdamW per device, on each device's own (unpadded) tensors:
    different ranks, learning rates and step counts (device 2 sits out steps 2 and 4, as a device that has run
    out of batches): parameters and both Adam moments within 1e-6 after K = 6 steps; the padding and a device's
    missing tensors stay exactly zero; a masked step leaves its device's tensors and moments bit for bit."""
    from legendfl.core.training import ADAMW_BETAS
    from legendfl.engine.parameter_bank import BankAdamW, ParameterBank

    gen = torch.Generator().manual_seed(1)
    shapes = {"A": (6, 10), "B": (7, 6), "head": (3, 7)}
    own = [{"A": (2, 10), "B": (7, 2), "head": (3, 7)}, {"A": (6, 10), "B": (7, 6), "head": (3, 7)}, {"head": (3, 7)}]
    lrs, decay, clip = [1e-2, 3e-3, 5e-2], 0.01, 1.0
    bank = ParameterBank(3, shapes, "cpu", torch.float32)
    tensors = [{k: torch.nn.Parameter(torch.randn(shape, generator=gen)) for k, shape in mine.items()} for mine in own]
    for d, mine in enumerate(tensors):
        for k, p in mine.items():
            bank.load(k, d, p.detach())
    bank_opt = BankAdamW(bank, lrs, ADAMW_BETAS, decay, max_grad_norm=clip)
    opts = [torch.optim.AdamW(list(mine.values()), lr=lr, betas=ADAMW_BETAS, weight_decay=decay) for mine, lr in zip(tensors, lrs)]
    for step in range(6):
        active = [0, 1] if step in (1, 3) else [0, 1, 2]
        before = bank.data[2].clone(), bank_opt.exp_avg[2].clone(), bank_opt.exp_avg_sq[2].clone()
        for d in active:
            for k, p in tensors[d].items():
                p.grad = torch.randn(p.shape, generator=gen) * (3.0 if step % 2 else 0.1)  # clipped and unclipped steps
                bank.parts[k].grad[(d, *(slice(0, n) for n in p.shape))].copy_(p.grad)
            torch.nn.utils.clip_grad_norm_(list(tensors[d].values()), clip)
            opts[d].step()
        bank_opt.step(active)
        bank.zero_grad()
        if 2 not in active:
            assert all(torch.equal(x, y[2]) for x, y in zip(before, (bank.data, bank_opt.exp_avg, bank_opt.exp_avg_sq)))
    for d, mine in enumerate(tensors):
        for k, p in mine.items():
            corner = (d, *(slice(0, n) for n in p.shape))
            state = opts[d].state[p]
            assert relative_error(bank.parts[k].detach()[corner], p.detach()) <= 1e-6, (d, k)
            assert relative_error(bank_opt.exp_avg[d][_columns(bank, k)].view(shapes[k])[corner[1:]],
                             state["exp_avg"]) <= 1e-6, (d, k)
            assert relative_error(bank_opt.exp_avg_sq[d][_columns(bank, k)].view(shapes[k])[corner[1:]],
                             state["exp_avg_sq"]) <= 1e-6, (d, k)
            assert int(state["step"]) == bank_opt.steps[d]
    padding = torch.ones_like(bank.data, dtype=torch.bool)
    for d, mine in enumerate(tensors):
        for k, p in mine.items():
            mask = padding[d][_columns(bank, k)].view(shapes[k])
            mask[tuple(slice(0, n) for n in p.shape)] = False
    assert bank_opt.steps == [6, 6, 4] and padding.any()
    assert not bank.data[padding].any() and not bank_opt.exp_avg[padding].any()  # exactly zero: never written


def _columns(bank, key):
    """The columns of the bank's buffer that hold part ``key``."""
    at = 0
    for k, part in bank.parts.items():
        size = part[0].numel()
        if k == key:
            return slice(at, at + size)
        at += size
    raise KeyError(key)


def test_counter_based_masks_keep_one_minus_p_and_differ_by_device_and_call():
    """The counter-based draw: about 1 - p kept, other masks for another device and for the next call, the part
    beyond a device's own width left alone (scaled as the generators' masks are), the same for a device whether
    it is drawn alone or with others."""
    from legendfl.engine.device_rows import DeviceRows, Segment, counter_dropout_mask

    rows = DeviceRows([7, 8])
    segs = [Segment(0, 0, 100, 30), Segment(1, 100, 200, 20)]
    x = torch.ones(200, 30, 64)
    first, second = counter_dropout_mask(x, 0.25, rows, segs), counter_dropout_mask(x, 0.25, rows, segs)
    kept = (first[:100] > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.01 and not torch.equal(first, second)
    assert not torch.equal(first[:100, :20], first[100:, :20])  # two devices, two masks
    assert torch.all(first[100:, 20:] == 1 / 0.75)  # beyond device 1's own width
    alone = DeviceRows([8])
    counter_dropout_mask(torch.ones(1, 1, 1), 0.25, alone, [Segment(0, 0, 1, 1)])  # device 8's first call
    assert torch.equal(counter_dropout_mask(torch.ones(100, 20, 64), 0.25, alone, [Segment(0, 0, 100, 20)]),
                       second[100:, :20])
