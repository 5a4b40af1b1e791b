"""The batched engine: a round's LoRA devices train step by step together through one frozen base.

At every step the active devices' batches (each the batch it would train on alone: ``trainer.local_batches``) are
padded on the right to the widest and stacked; devices with the same shallowest LoRA layer share one forward and
one backward through the shared frozen backbone (a pass), in which every targeted module adds each device's own
LoRA delta to its own rows (``engine.batched_lora``). Passes are split by that layer because a backward runs down
to the shallowest trained layer of its batch: mixed in one pass, a depth-1 device would pay for a depth-6
device's backward (measured on 2 CPU cores: 1.5x slower than sequential; split, on par). The loss is the sum over
devices of each device's own mean loss (plus its local terms; all devices' means from one per-example loss and
segment sums), so each device's gradient is exactly its own; then one AdamW
step over the group's parameter bank clips each device's gradients and steps each device with its own learning
rate (``engine.parameter_bank``: what a per-device ``torch.optim.AdamW`` computes). Dropout masks come from
each device's own generator (``engine.device_rows``). The result of every device therefore equals the sequential
engine's on the same padded batches (1e-5 relative in fp32, 1e-10 in float64: ``tests/test_batched_engine.py``);
padding to the pass's widest device moves fp32 results by rounding only (as much as it moves peft's), whoever
shares the pass.

Devices are cut into groups that fit ``max_batch_tokens`` (padded tokens of one step), ordered by their
shallowest LoRA layer so that devices of one depth share a group and its passes.
Work, FLOPs and tokens are counted per device at its own width; measured wall times are each device's
share (by tokens) of the shared passes. The virtual clock prices each device's own work as before.
"""
from __future__ import annotations

import time
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..core.lora_layout import LoraLayout
from ..core.seeding import derive_seed
from ..core.strategy import DeviceResult, DeviceTask
from ..core.training import ADAMW_BETAS, TrainConfig
from ..core.work import DeviceWork, counted
from ..models.backbone import Backbone
from .answer_logits import IGNORE_INDEX, answer_logits, causal_loss
from .batched_lora import batchable_head, inject_batched
from .device_rows import DeviceRows, Segment, device_dropout
from .parameter_bank import BankAdamW, accumulating_in_place, to_device
from .local_terms import batched_support, implement
from .trainer import FlopsFn, autocast_bf16, local_batches, loss_metrics
CPU_MAX_PADDING = 0.25  # on a CPU padded tokens cost compute: cut a pass rather than pad it by more than this
BATCH_MEMORY_BYTES = {"cpu": 4 * 2**30}  # activations one step may hold; on a GPU: half its memory


def batched_applies(backbone: Backbone, task: DeviceTask, method: Counting) -> bool:
    """Whether this engine trains ``task``: its client method declares the capability (``batched``: LoRA of a layout),
    every local term's implementation does too (``engine.local_terms``), and the head is made of linear modules."""
    return (method.batched and isinstance(task.config, LoraLayout) and batchable_head(backbone)
            and all(batched_support(term) for term in task.local_terms))


def default_batch_tokens(backbone: Backbone) -> int:
    """Padded tokens per step that fit the activation memory budget (a rough per-token estimate)."""
    spec = backbone.spec
    per_layer = 2 * sum(i + o for i, o in spec.linear_modules.values())
    vocab = int(getattr(backbone.model.config, "vocab_size", 0) or 0) if backbone.task_type == "causal_lm" else 0
    per_token = 4 * (spec.num_layers * per_layer + 3 * vocab)
    device = next(backbone.model.parameters()).device
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory // 2
    else:
        budget = BATCH_MEMORY_BYTES.get(device.type, BATCH_MEMORY_BYTES["cpu"])
    return max(256, int(budget // max(per_token, 1)))


def plan_groups(tasks: list[DeviceTask], batches: dict[int, list[np.ndarray]], lengths: np.ndarray,
                max_batch_tokens: int) -> list[list[DeviceTask]]:
    """Groups of tasks whose stacked step (rows x widest width) stays within ``max_batch_tokens``."""
    order = sorted(tasks, key=lambda t: (t.config.shallowest, t.device_id))
    groups: list[list[DeviceTask]] = []
    rows = width = 0
    for task in order:
        b = batches[task.device_id]
        r = max(len(x) for x in b)
        w = max(int(lengths[x].max()) for x in b)
        if groups and (rows + r) * max(width, w) <= max_batch_tokens:
            groups[-1].append(task)
            rows, width = rows + r, max(width, w)
        else:
            groups.append([task])
            rows, width = r, w
    return groups


class Counting(Protocol):
    """What the engine asks of the tasks' client method (``methods.base.ClientMethod``, one whose ``batched`` says
    its tasks are LoRA layouts this engine trains): the FLOPs of a batch and the work the cost model prices."""

    batched: bool

    def flops(self, backbone: Backbone, task: DeviceTask) -> FlopsFn: ...

    def work(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> DeviceWork: ...


def train_batched(backbone: Backbone, tasks: list[DeviceTask], data, partitions: dict[int, list[int]],
                  cfg: TrainConfig, method: Counting, max_batch_tokens: int | None = None,
                  done: Callable[[DeviceResult], None] = lambda result: None) -> dict[int, DeviceResult]:
    """Train every task (all :func:`batched_applies`) on its device's partition; results by device (``done``
    hears of each device when its group finishes). ``method`` counts each device's FLOPs and work."""
    batches = {t.device_id: local_batches(partitions[t.device_id], cfg, cfg.seed, t.round, t.device_id, data.lengths)
               for t in tasks}
    budget = max_batch_tokens or default_batch_tokens(backbone)
    results = {}
    for group in plan_groups(tasks, batches, data.lengths, budget):
        for task, result in zip(group, _train_group(backbone, group, data, [batches[t.device_id] for t in group], cfg, method)):
            results[task.device_id] = result
            done(result)
    return results


def _stack(parts: list[dict[str, torch.Tensor]], width: int, pad_id: int, device) -> dict[str, torch.Tensor]:
    out = {}
    for key in parts[0]:
        fill = pad_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
        padded = [F.pad(p[key], (0, width - p[key].shape[1]), value=fill) if p[key].dim() == 2 else p[key]
                  for p in parts]
        out[key] = to_device(torch.cat(padded, dim=0), device)
    return out


def _device_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """The loss transformers computes for one device's rows (mean over its examples or answer tokens); called
    where the model's forward runs (under the same autocast), as transformers computes it inside the forward.
    Causal: ``logits`` at the positions the loss reads and ``labels`` the next-token targets there
    (``answer_logits``)."""
    if causal:  # transformers' ForCausalLMLoss: fp32 logits, ignore -100, mean over counted tokens
        return causal_loss(logits, labels)
    if logits.shape[-1] == 1:  # regression head
        return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


def _device_losses(logits: torch.Tensor, labels: torch.Tensor, segments: list[Segment], causal: bool) -> torch.Tensor:
    """Every segment's :func:`_device_loss` as one tensor ``[devices]``: per-example (or per-token) losses once for
    the whole batch, then each device's mean from segment sums (a few kernels, not a few per device; the same
    means up to the summation order). One device, or a regression head: :func:`_device_loss` itself."""
    if len(segments) == 1 or (not causal and logits.shape[-1] == 1):
        return torch.stack([_device_loss(logits[g.start:g.stop], labels[g.start:g.stop], causal) for g in segments])
    sizes = [g.stop - g.start for g in segments]
    owner = to_device(torch.repeat_interleave(torch.arange(len(segments)), torch.tensor(sizes)), logits.device)
    if causal:  # as _device_loss: fp32 logits, ignore -100; per device, the mean over its counted tokens
        logits = logits.float()
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                    reduction="none").view(labels.shape)
        per_row, counts = per_token.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1).to(per_token.dtype)
    else:
        per_row = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), reduction="none")
        counts = torch.ones_like(per_row)
    sums = per_row.new_zeros(len(segments)).index_add_(0, owner, per_row)
    return sums / counts.new_zeros(len(segments)).index_add_(0, owner, counts)


def _passes(tasks: list[DeviceTask], active: list[int], widths: dict[int, int], rows: dict[int, int],
            max_padding: float | None) -> list[list[int]]:
    """The active slots split by their shallowest LoRA layer: a pass's backward then stops where all of its
    devices' stops (a device trained to depth 1 never pays for another's depth 6). With ``max_padding`` (on a
    CPU, where padded tokens cost compute), a pass is also cut, in order of width, where padding to its
    widest device would add more than that fraction of the pass's own tokens."""
    by_layer: dict[int, list[int]] = {}
    for i in active:
        by_layer.setdefault(tasks[i].config.shallowest, []).append(i)
    passes = []
    for layer in sorted(by_layer, reverse=True):
        current: list[int] = []
        own = count = 0
        for i in sorted(by_layer[layer], key=lambda j: (widths[j], j)):
            fits = max_padding is None or (count + rows[i]) * widths[i] <= (1 + max_padding) * (own + rows[i] * widths[i])
            if current and not fits:
                passes.append(current)
                current, own, count = [], 0, 0
            current.append(i)
            own, count = own + rows[i] * widths[i], count + rows[i]
        passes.append(current)
    return passes


def _train_pass(model, data, indices: list[np.ndarray], slots: list[int], rows: DeviceRows, terms, losses, stats,
                flops, cfg: TrainConfig, causal: bool, device) -> None:
    """One forward and backward of these slots' batches (stacked, right-padded); gradients land on each slot's own
    parameters; losses, FLOPs, tokens and each slot's share of the measured time are recorded."""
    parts = [data.batch(idx) for idx in indices]
    widths = [p["input_ids"].shape[1] for p in parts]
    batch = _stack(parts, max(widths), data.pad_id, device)
    labels = batch.pop("labels")
    segments, at = [], 0
    for i, part, w in zip(slots, parts, widths):
        segments.append(Segment(i, at, at + len(part["input_ids"]), w))
        at += len(part["input_ids"])
    t0 = time.perf_counter()
    with rows.step(segments), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16(cfg.bf16, device)):
        if causal:  # the LM head only where some row's next token is counted
            logits, labels = answer_logits(model, batch, labels)
        else:
            logits = model(**batch).logits
        device_losses = _device_losses(logits, labels, segments, causal)
    total = device_losses.float().sum()
    for j, seg in enumerate(segments):
        losses[seg.slot].append(device_losses[j].detach())  # read back once, after the group (no host sync per step)
        for term in terms[seg.slot]:
            total = total + term.penalty(None)
    t1 = time.perf_counter()
    total.backward()
    t2 = time.perf_counter()
    padded = sum(len(p["input_ids"]) * w for p, w in zip(parts, widths))
    for i, part, w in zip(slots, parts, widths):
        seqs = len(part["input_ids"])
        share = seqs * w / padded
        s, counted = stats[i], flops[i](seqs, w)
        s["fwd_s"] += (t1 - t0) * share
        s["bwd_s"] += (t2 - t1) * share
        s["share"] += (t2 - t0) * share
        s["fwd"] += counted.forward
        s["bwd"] += counted.backward
        s["layer"] += counted.layer_forward
        s["trainable"] += counted.trainable_forward
        s["tokens"] += int(part["attention_mask"].sum())
        s["examples"] += seqs


def _train_group(backbone: Backbone, tasks: list[DeviceTask], data, batches: list[list[np.ndarray]],
                 cfg: TrainConfig, method: Counting) -> list[DeviceResult]:
    model, n = backbone.model, len(tasks)
    causal = backbone.task_type == "causal_lm"
    rows = DeviceRows([derive_seed(cfg.seed, "dropout", t.round, t.device_id) for t in tasks])
    start = time.perf_counter()
    stats = [dict(fwd_s=0.0, bwd_s=0.0, fwd=0.0, bwd=0.0, layer=0.0, trainable=0.0, tokens=0, examples=0, share=0.0)
             for _ in tasks]
    losses: list[list[torch.Tensor]] = [[] for _ in tasks]
    with inject_batched(backbone, [t.config for t in tasks], [t.params for t in tasks], rows, cfg.lora_scaling,
                        cfg.lora_dropout) as (bank, slots), device_dropout(model, rows), accumulating_in_place():
        terms = [[implement(term, t.method).bind(slot.pairs) for term in t.local_terms] for t, slot in zip(tasks, slots)]
        start_metrics: list[dict] = [{} for _ in tasks]
        for i in range(n):
            for term in terms[i]:
                term.start(None, start_metrics[i])
        optimizer = BankAdamW(bank, [t.lr for t in tasks], ADAMW_BETAS, cfg.weight_decay, cfg.max_grad_norm)
        flops = [method.flops(backbone, t) for t in tasks]
        device = next(model.parameters()).device
        model.train()
        for step in range(max(len(b) for b in batches)):
            active = [i for i in range(n) if step < len(batches[i])]
            widths = {i: int(data.lengths[batches[i][step]].max()) for i in active}
            counts = {i: len(batches[i][step]) for i in active}
            for depth_pass in _passes(tasks, active, widths, counts, CPU_MAX_PADDING if device.type == "cpu" else None):
                _train_pass(model, data, [batches[i][step] for i in depth_pass], depth_pass, rows, terms, losses,
                            stats, flops, cfg, causal, device)
            t0 = time.perf_counter()
            optimizer.step(active)  # every device's clipping and AdamW step at once; the others masked
            bank.zero_grad()
            elapsed = (time.perf_counter() - t0) / len(active)
            for i in active:
                stats[i]["bwd_s"] += elapsed
                stats[i]["share"] += elapsed
        model.eval()
        step_losses = [torch.stack(x).float().cpu().tolist() if x else [] for x in losses]
        results = []
        overhead = (time.perf_counter() - start - sum(s["share"] for s in stats)) / n
        for i, (task, slot, s) in enumerate(zip(tasks, slots, stats)):
            result = DeviceResult(
                device_id=task.device_id, round=task.round, params=slot.upload(), num_examples=s["examples"],
                num_tokens=s["tokens"], num_steps=len(batches[i]),
                work=counted(s["fwd"], s["bwd"], s["layer"], s["trainable"], len(batches[i])),
                train_loss=float(np.mean(step_losses[i])) if step_losses[i] else float("nan"),
                wall_time_s=s["share"] + overhead, measured_forward_s=s["fwd_s"], measured_backward_s=s["bwd_s"],
                metrics=loss_metrics(step_losses[i]))
            for term in terms[i]:
                term.finish(None, result.metrics)
            result.metrics.update(start_metrics[i])
            result.work = method.work(task, result, backbone.num_layers)
            results.append(result)
    return results
