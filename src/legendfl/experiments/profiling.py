"""Measuring this machine's per-batch training latency (``legendfl profile``), as the paper's Fig. 4a does.

For one model, batch size and padded length, with rank-``rank`` LoRA on the top k layers (k = 1..L) and
the trainer's settings (AdamW, bf16 autocast when enabled), every timed step is forward + backward +
optimizer step, on fixed real batches, after warm-up steps; on CUDA the device is synchronised before
every clock read. Also timed: LoRA on layer 0 only (the backward then traverses every layer above it,
frozen) and the forward pass alone. The fit (``fit_profile``):

- backward_ms_per_trained_layer = slope of the least-squares line through t(k), k = 1..L;
- forward_ms_per_layer = F / L with F = the measured forward time of the depth-1 step, or the intercept if
  that is smaller (so the profile gives back the fitted line exactly);
- step_ms = intercept - F (optimizer step, head, launches);
- backward_ms_per_frozen_layer = (t(layer 0 only) - t(1)) / (L - 1): a frozen layer that backward traverses.
"""
from __future__ import annotations

import contextlib
import datetime
import platform
import time

import numpy as np
import torch

from ..core.flops import layer_forward_flops
from ..core.lora_layout import LoraLayout
from ..engine.answer_logits import training_loss
from ..engine.trainer import autocast_bf16
from ..methods.lora import lora_adapter
from ..data.tasks import load_task
from ..fleet.profiles import device_type_entry
from ..models.backbone import Backbone, load_backbone
from ..models.tokenized import TokenizedData


def fixed_batches(data: TokenizedData, batch_size: int, seq_len: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` batches of real examples, each padded (or cut) to exactly ``seq_len`` tokens."""
    gen = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        batch = data.batch(gen.choice(len(data), batch_size, replace=False))
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in batch:
                t = batch[key][:, :seq_len]
                pad = data.pad_id if key == "input_ids" else 0
                batch[key] = torch.nn.functional.pad(t, (0, seq_len - t.shape[1]), value=pad)
        out.append(batch)
    return out


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a clock read after it measures the work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_layout(backbone: Backbone, layout: LoraLayout, batches: list[dict], warmup: int = 2, bf16: bool | str = "auto",
                memory: bool = False) -> dict:
    """Median per-batch latency (ms) of training ``layout``, and of its forward part, over ``batches`` (after
    ``warmup`` of them). With ``memory``: the mean bytes autograd saves for the backward pass (``saved_bytes``,
    counted by a saved-tensors hook) and the optimizer state of the trained tensors (``state_bytes``: weights,
    gradients and AdamW's two moments)."""
    params = {**backbone.spec.init_lora(layout, 0), **backbone.head_tensors()}
    with lora_adapter(backbone, layout, params) as model:
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-4)
        device = next(model.parameters()).device
        steps, forwards, saved = [], [], []
        for i, batch in enumerate(batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            held = [0]

            def pack(t: torch.Tensor, held: list[int] = held) -> torch.Tensor:
                held[0] += t.numel() * t.element_size()
                return t

            counting = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if memory else contextlib.nullcontext()
            synchronize(device)
            t0 = time.perf_counter()
            with counting, torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16(bf16, device)):
                loss = training_loss(model, batch)  # as training computes it (a decoder: the LM head where it counts)
            synchronize(device)
            t1 = time.perf_counter()
            loss.float().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            synchronize(device)
            t2 = time.perf_counter()
            if i >= warmup:
                steps.append(t2 - t0)
                forwards.append(t1 - t0)
                saved.append(held[0])
        out = {"step_ms": 1000 * float(np.median(steps)), "forward_ms": 1000 * float(np.median(forwards))}
        if memory:
            out["saved_bytes"] = float(np.mean(saved))
            out["state_bytes"] = float(sum(p.numel() * p.element_size() for p in trainable) * 4)
    return out


def measure_profile(backbone: Backbone, data: TokenizedData, batch_size: int = 16, seq_len: int = 64, rank: int = 8,
                    batches: int = 10, warmup: int = 2, bf16: bool | str = "auto", seed: int = 0) -> dict:
    """Per-batch latency at every LoRA depth, with LoRA on layer 0 only, and the fitted profile."""
    L = backbone.num_layers
    picked = fixed_batches(data, batch_size, seq_len, batches + warmup, seed)
    by_depth = {k: time_layout(backbone, LoraLayout.top(k, [rank] * L), picked, warmup, bf16) for k in range(1, L + 1)}
    shallow = time_layout(backbone, LoraLayout.uniform([0], rank, L), picked, warmup, bf16) if L > 1 else by_depth[1]
    return {"by_depth_ms": {k: v["step_ms"] for k, v in by_depth.items()}, "layer0_only_ms": shallow["step_ms"],
            "forward_ms": by_depth[1]["forward_ms"], **fit_profile(backbone, by_depth, shallow["step_ms"], batch_size, seq_len)}


def fit_profile(backbone: Backbone, by_depth: dict[int, dict], layer0_only_ms: float, batch_size: int, seq_len: int) -> dict:
    L = backbone.num_layers
    ks = np.array(sorted(by_depth), dtype=float)
    ts = np.array([by_depth[int(k)]["step_ms"] for k in ks])
    slope, intercept = np.polyfit(ks, ts, 1) if len(ks) > 1 else (0.0, float(ts[0]))
    forward = min(by_depth[1]["forward_ms"], max(float(intercept), 1e-6))
    spec = backbone.spec
    layer_flops = layer_forward_flops(spec, batch_size * seq_len, seq_len)
    intermediate = max(max(i, o) for i, o in spec.linear_modules.values())
    frozen = (layer0_only_ms - by_depth[1]["step_ms"]) / (L - 1) if L > 1 else float(slope)
    return {
        "reference_hidden": spec.hidden_size, "reference_intermediate": intermediate, "reference_batch": batch_size,
        "reference_seq_len": seq_len, "forward_ms_per_layer": forward / L, "backward_ms_per_trained_layer": max(0.0, float(slope)),
        "backward_ms_per_frozen_layer": max(0.0, frozen), "step_ms": max(0.0, float(intercept) - forward),
        # the flops model's throughput for this machine: one forward pass's FLOPs over its measured time
        "reference_gflops": L * layer_flops / (forward / 1000.0) / 1e9,
    }


def profile_entry(model: str, task: str = "sst2", batch_size: int = 16, seq_len: int = 64, rank: int = 8,
                  batches: int = 10, device: str = "auto", threads: int | None = None, bf16: bool | str = "auto",
                  name: str = "this-machine") -> str:
    """``legendfl profile``: measure this machine's per-batch training latency by LoRA depth on ``task``'s real
    examples; a fleet file's device type entry (TOML), with where and how it was measured in its comment."""
    sizes = {"batch_size": batch_size, "seq_len": seq_len, "rank": rank, "batches": batches}
    if threads is not None:
        sizes["threads"] = threads
    for key, value in sizes.items():
        if value <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got {value}")
    if threads:
        torch.set_num_threads(threads)
    data_task = load_task(task)
    examples = data_task.train[:2000]
    if batch_size > len(examples):
        raise ValueError(f"--batch-size must be at most {len(examples)} (the {task} examples profiled), got {batch_size}")
    backbone = load_backbone(model, data_task.num_labels, 0, device)
    positions = getattr(backbone.model.config, "max_position_embeddings", None)
    if positions and seq_len > positions:
        raise ValueError(f"--seq-len must be at most {positions} (model {model!r}'s positions), got {seq_len}")
    bound = backbone.spec.max_lora_rank
    if bound is not None and rank > bound:
        raise ValueError(f"--rank must be at most {bound} for model {model!r}, got {rank}")
    data = TokenizedData(backbone.tokenizer, examples, seq_len)
    m = measure_profile(backbone, data, batch_size, seq_len, rank, batches, bf16=bf16)
    where_device = next(backbone.model.parameters()).device
    cpu = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(where_device) if where_device.type == "cuda" else cpu
    L = backbone.num_layers
    depths = ", ".join(f"{k}: {v:.1f}" for k, v in m["by_depth_ms"].items())
    m["source"] = (f"legendfl profile on {platform.node()} ({where}), torch {torch.__version__}, {datetime.date.today()}: "
                   f"{model}, batch {batch_size} x {seq_len}, LoRA rank {rank}, bf16 {autocast_bf16(bf16, where_device)}")
    comment = (f"{m['source']}\nper-batch training latency (ms) by LoRA depth: {depths}; LoRA on layer 0 only: "
               f"{m['layer0_only_ms']:.1f}; forward {m['forward_ms']:.1f}\ndepth {L} / depth 1 = "
               f"{m['by_depth_ms'][L] / m['by_depth_ms'][1]:.2f}x")
    return device_type_entry(name, m, comment)
