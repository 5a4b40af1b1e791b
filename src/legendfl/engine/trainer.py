"""The local training loop shared by every client method: AdamW on a device's own data.

Batches are drawn in an order derived from (seed, round, device); dropout masks come from the device's own
generator seeded the same way (``engine.device_rows``, shared with the batched engine). The base
model is frozen and, because no tensor below the shallowest LoRA layer requires a gradient, autograd
computes no gradient there (tests/test_trainer.py). Each result reports examples, tokens, forward and
backward FLOPs and measured wall times; the client method (``methods.base``) adds what it uploads.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.flops import BatchFlops
from ..core.seeding import derive_seed, rng
from ..core.strategy import DeviceResult, DeviceTask
from ..core.training import ADAMW_BETAS, TrainConfig
from ..core.work import counted
from ..models.tokenized import TokenizedData
from .answer_logits import training_loss
from .device_rows import DeviceRows, Segment, device_dropout


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: emulated bf16 (e.g. a CPU without AVX512-BF16) made one
    local training step 9x slower than fp32 on this project's 2-core AVX2 machine (43 s vs 5 s a round)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def autocast_bf16(setting: bool | str, device: torch.device) -> bool:
    """The ``bf16`` option resolved on ``device``: True, False, or "auto" (:func:`native_bf16`)."""
    return native_bf16(device) if setting == "auto" else bool(setting)

def local_batches(indices: list[int], cfg: TrainConfig, seed: int, rnd: int, device_id: int,
                  lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """The batches one device trains on in one round (order from (seed, round, device)).

    With ``group_by_length`` (and ``lengths``), each shuffled pass is cut into chunks of 50 batches, each
    chunk sorted by length and cut into batches, and the batches shuffled: less padding (about 2x less
    work on SST-2), the same examples per epoch.
    """
    gen = rng(seed, "batches", rnd, device_id)
    total = cfg.local_steps(len(indices))
    batches: list[np.ndarray] = []
    arr = np.asarray(indices)
    while len(batches) < total:
        order = gen.permutation(arr)
        if cfg.group_by_length and lengths is not None:
            chunk = 50 * cfg.batch_size
            epoch: list[np.ndarray] = []
            for c in range(0, len(order), chunk):
                part = order[c:c + chunk]
                part = part[np.argsort(lengths[part], kind="stable")]
                epoch.extend(part[i:i + cfg.batch_size] for i in range(0, len(part), cfg.batch_size))
            batches.extend(epoch[j] for j in gen.permutation(len(epoch)))
        else:
            batches.extend(order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size))
    return batches[:total]


Penalty = Callable[[torch.nn.Module], torch.Tensor]  # a term added to every step's loss (``engine.local_terms``)
FlopsFn = Callable[[int, int], BatchFlops]  # (sequences, padded width) -> FLOPs of that batch


def local_training(model: torch.nn.Module, task: DeviceTask, data: TokenizedData, indices: list[int], cfg: TrainConfig,
                   flops: FlopsFn, penalties: Sequence[Penalty] = ()) -> DeviceResult:
    """The local loop shared by every kind of method: AdamW over the model's trainable parameters.

    Returns a result without ``params``; the caller fills in what the device uploads.
    """
    batches = local_batches(indices, cfg, cfg.seed, task.round, task.device_id, data.lengths)
    rows = DeviceRows([derive_seed(cfg.seed, "dropout", task.round, task.device_id)])
    with device_dropout(model, rows):
        return _train_steps(model, task, data, batches, rows, cfg, flops, penalties)


def _train_steps(model, task, data, batches, rows: DeviceRows, cfg: TrainConfig, flops: FlopsFn,
                 penalties: Sequence[Penalty]) -> DeviceResult:
    start = time.perf_counter()
    fwd_s = bwd_s = fwd_flops = bwd_flops = layer_flops = trainable_flops = 0.0
    tokens = examples = 0
    losses = []
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=task.lr, betas=ADAMW_BETAS, weight_decay=cfg.weight_decay)
    device = next(model.parameters()).device
    for idx in batches:
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        t0 = time.perf_counter()
        with (rows.step([Segment(0, 0, len(idx), batch["input_ids"].shape[1])]),
              torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16(cfg.bf16, device))):
            batch_loss = training_loss(model, batch)
        loss = batch_loss.float()
        for penalty in penalties:
            loss = loss + penalty(model)
        t1 = time.perf_counter()
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        fwd_s += t1 - t0
        bwd_s += t2 - t1
        seqs, width = batch["input_ids"].shape
        batch_flops = flops(seqs, width)
        fwd_flops += batch_flops.forward
        bwd_flops += batch_flops.backward
        layer_flops += batch_flops.layer_forward
        trainable_flops += batch_flops.trainable_forward
        tokens += int(batch["attention_mask"].sum())
        examples += seqs
        losses.append(float(batch_loss.detach()))
    model.eval()
    return DeviceResult(
        device_id=task.device_id, round=task.round, params={}, num_examples=examples, num_tokens=tokens,
        num_steps=len(batches), work=counted(fwd_flops, bwd_flops, layer_flops, trainable_flops, len(batches)),
        train_loss=float(np.mean(losses)) if losses else float("nan"),
        wall_time_s=time.perf_counter() - start, measured_forward_s=fwd_s, measured_backward_s=bwd_s,
        metrics=loss_metrics(losses),
    )


def loss_metrics(losses: Sequence[float]) -> dict[str, float]:
    """A device's first and last step loss of the round (its local progress: FedSpine's bandit reward)."""
    return {"first_loss": losses[0], "last_loss": losses[-1]} if losses else {}


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, data: TokenizedData, batch_size: int = 64) -> dict[str, float]:
    """Accuracy and mean loss on ``data`` (fp32)."""
    order = np.argsort(data.lengths)  # length-sorted batches: less padding, same result
    correct = 0
    loss_sum = 0.0
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        loss_sum += float(out.loss) * len(idx)
    return {"accuracy": correct / len(data), "loss": loss_sum / len(data)}
