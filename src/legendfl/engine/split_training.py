"""One split round (``core.split``) on the shared backbone: the devices' bottoms and the server's top, iteration
by iteration.

The backbone carries LoRA on every block (``methods.lora.lora_adapter``). The server's top LoRA and head are
its live parameters; each device's bottom LoRA is a set of tensors of its own, put in place of the live bottom
parameters for its forward only (``torch.func.functional_call``), so every device's autograd graph holds its
own tensors and the devices step independently. In each iteration:

1. each device runs the model up to block s - 1 on its own batch (a forward hook stops it there);
2. the features are right-padded to the widest device's width, concatenated (feature merging) and made a leaf;
   the model runs from block s on them (blocks 0 .. s-1 are taken out of the block list for that call, and a
   pre-hook on block s puts the merged features in place of the embeddings' output);
3. the merged batch's mean loss is backpropagated through the top; the server clips and steps (AdamW, its state
   kept across rounds in the strategy);
4. each device receives its rows of the features' gradient, scaled by N / b_i (so that it is the gradient of
   its own examples' mean loss: the authors' dispatch rule; for a decoder, whose loss is a mean over answer
   tokens, by the merged batch's answer tokens over its own), backpropagates through its bottom, clips and steps.

Padding is exact: the padded positions are masked keys, so no real token attends to them. Batches come from
(seed, round, device) and dropout from each device's own generator (``engine.device_rows``), in its bottom
and in its rows of the merged top, so a device's draws do not depend on who else is in the round.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..core.flops import batch_work
from ..core.lora_layout import LoraLayout
from ..core.seeding import derive_seed
from ..core.split import OPTIMIZER, SERVER_ID, SplitPlan, activation_bytes
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec, Tensors, key_layer, tensors_bytes
from ..core.training import ADAMW_BETAS, TrainConfig
from ..core.work import DeviceWork
from ..models.backbone import Backbone, head_parameters
from ..models.generative import IGNORE, CausalLMData
from ..models.keys import lora_key_of, lora_regex
from ..models.tokenized import TokenizedData
from .device_rows import DeviceRows, Segment, device_dropout
from .trainer import autocast_bf16, local_batches, loss_metrics


class _Stop(Exception):
    """Raised by the hook at block s - 1: a device's forward ends there."""


def _block_list(backbone: Backbone) -> tuple[nn.Module, str, nn.ModuleList]:
    parent, _, attribute = backbone.block_prefix.rpartition(".")
    owner = backbone.model.get_submodule(parent) if parent else backbone.model
    return owner, attribute, getattr(owner, attribute)


def bottom_features(backbone: Backbone, split: int, params: dict[str, torch.Tensor], inputs: dict) -> torch.Tensor:
    """The output of block ``split - 1`` for ``inputs`` with the bottom parameters ``params`` (live names)."""
    captured: dict[str, torch.Tensor] = {}

    def stop(module, args, output):
        captured["features"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = _block_list(backbone)[2][split - 1].register_forward_hook(stop)
    try:
        torch.func.functional_call(backbone.model, params, args=(), kwargs=inputs, strict=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["features"]


@contextmanager
def top_only(backbone: Backbone, split: int, features: torch.Tensor) -> Iterator[None]:
    """Within the context a forward of the model runs blocks ``split ..`` on ``features`` (and the head)."""
    owner, attribute, blocks = _block_list(backbone)

    def feed(module, args, kwargs):
        if args:
            return (features, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": features}

    handle = blocks[split].register_forward_pre_hook(feed, with_kwargs=True)
    setattr(owner, attribute, nn.ModuleList(list(blocks)[split:]))
    try:
        yield
    finally:
        setattr(owner, attribute, blocks)
        handle.remove()


def merged_inputs(batches: list[dict[str, torch.Tensor]], width: int) -> dict[str, torch.Tensor]:
    """The server's inputs for the merged batch: a mask and labels (token ids are placeholders: the features
    replace the embeddings). A decoder's labels are per token, padded with ``IGNORE`` like its batches."""
    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return nn.functional.pad(x, (0, width - x.shape[1]), value=value) if x.dim() == 2 else x

    mask = torch.cat([pad(b["attention_mask"], 0) for b in batches])
    return {"input_ids": torch.zeros_like(mask), "attention_mask": mask,
            "labels": torch.cat([pad(b["labels"], IGNORE) for b in batches])}


def loss_terms(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the merged batch: the sum of its loss terms and how many it has, as the model's own loss counts
    them (a classifier: one cross-entropy per example; a decoder: one per answer token, shifted by one)."""
    logits = logits.detach().float()
    if labels.dim() == 1:
        return nn.functional.cross_entropy(logits, labels, reduction="none"), torch.ones(len(labels))
    targets = labels[:, 1:]
    terms = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    return terms.sum(dim=1), (targets != IGNORE).sum(dim=1).float()


def split_iteration(backbone: Backbone, split: int, device_params: list[dict[str, torch.Tensor]],
                    batches: list[dict[str, torch.Tensor]], rows: DeviceRows | None = None, dispatch: bool = True,
                    bf16: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Forward and backward of one iteration: gradients land in the server's live top parameters and in each
    device's own tensors. Returns the merged batch's mean loss and each device's mean loss over its rows.
    ``dispatch``: scale device i's gradient by N / b_i (off: the plain gradient of the merged mean loss)."""
    device = next(backbone.model.parameters()).device
    inputs = [{k: v.to(device) for k, v in b.items() if k != "labels"} for b in batches]
    features = []
    for slot, (params, x) in enumerate(zip(device_params, inputs)):
        step = rows.step([Segment(slot, 0, *x["input_ids"].shape)]) if rows is not None else nullcontext()
        with step, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            features.append(bottom_features(backbone, split, params, x))
    width = max(f.shape[1] for f in features)
    merged = torch.cat([nn.functional.pad(f.detach(), (0, 0, 0, width - f.shape[1])) for f in features])
    merged.requires_grad_(True)
    top_inputs = {k: v.to(device) for k, v in merged_inputs(batches, width).items()}
    starts = np.cumsum([0] + [f.shape[0] for f in features])
    segments = [Segment(i, int(starts[i]), int(starts[i + 1]), f.shape[1]) for i, f in enumerate(features)]
    with (rows.step(segments) if rows is not None else nullcontext()), top_only(backbone, split, merged), \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = backbone.model(**top_inputs)
    loss = out.loss.to(torch.promote_types(out.loss.dtype, torch.float32))  # bf16 -> fp32; fp64 stays
    loss.backward()
    sums, counts = loss_terms(out.logits, top_inputs["labels"])
    total = float(counts.sum())
    losses = []
    for seg, f in zip(segments, features):
        own = float(counts[seg.start:seg.stop].sum())
        grad = merged.grad[seg.start:seg.stop, : seg.width]
        scale = total / own if dispatch and own > 0 else 1.0  # the gradient of its own terms' mean
        f.backward((grad * scale).to(f.dtype))
        losses.append(float(sums[seg.start:seg.stop].sum()) / own if own > 0 else float("nan"))
    return loss.detach(), losses


def _adamw_state(opt: torch.optim.AdamW, params: dict[str, nn.Parameter]) -> Tensors:
    out: Tensors = {}
    for key, p in params.items():
        for name, value in opt.state.get(p, {}).items():
            out[f"{OPTIMIZER}{key}.{name}"] = value.detach().to("cpu", copy=True)
    return out


def _load_adamw_state(opt: torch.optim.AdamW, params: dict[str, nn.Parameter], tensors: Tensors) -> None:
    for key, p in params.items():
        state = {name: tensors[f"{OPTIMIZER}{key}.{name}"].to(p.device).clone()
                 for name in ("step", "exp_avg", "exp_avg_sq") if f"{OPTIMIZER}{key}.{name}" in tensors}
        if state:
            opt.state[p] = state


def _part_spec(spec: ModelSpec, layers: int, head: bool) -> ModelSpec:
    """The model's shapes for a part of ``layers`` blocks (the bottom has no head)."""
    return dataclasses.replace(spec, num_layers=layers, **({} if head else {"head": {}, "output_projection": 0}))


def _iteration_work(spec: ModelSpec, layout: LoraLayout, sequences: int, width: int, up: int, down: int) -> DeviceWork:
    counted = batch_work(spec, layout, sequences, width)
    return DeviceWork(forward_flops=counted.forward, backward_flops=counted.backward, download_bytes=down,
                      upload_bytes=up, trained_depth=spec.num_layers, trained_layers=spec.num_layers,
                      num_layers=spec.num_layers, steps=1, layer_forward_flops=counted.layer_forward,
                      trainable_forward_flops=counted.trainable_forward)


def _total_work(iterations: list[DeviceWork], download: int, upload: int, rank_sum: int) -> DeviceWork:
    """A participant's round in one work record (what records and re-timing see; the clock uses the iterations)."""
    first = iterations[0]
    return DeviceWork(forward_flops=sum(w.forward_flops for w in iterations),
                      backward_flops=sum(w.backward_flops for w in iterations),
                      download_bytes=download + sum(w.download_bytes for w in iterations),
                      upload_bytes=upload + sum(w.upload_bytes for w in iterations),
                      trained_depth=first.trained_depth, trained_layers=first.trained_layers, num_layers=first.num_layers,
                      rank_sum=rank_sum, lora_upload_bytes=upload, lora_download_bytes=download, steps=len(iterations),
                      layer_forward_flops=sum(w.layer_forward_flops for w in iterations),
                      trainable_forward_flops=sum(w.trainable_forward_flops for w in iterations))


def train_split_round(backbone: Backbone, model: nn.Module, server: DeviceTask, tasks: list[DeviceTask],
                      data: TokenizedData | CausalLMData, partitions: dict[int, list[int]],
                      cfg: TrainConfig) -> dict[int, DeviceResult]:
    """Train one split round; ``model``: the backbone with LoRA on every block holding the server's top and head
    (``methods.split_lora``). Results by device id, the server's under ``SERVER_ID``."""
    plan: SplitPlan = server.config
    split, spec = plan.split_layer, backbone.spec
    regex = lora_regex(backbone.block_prefix)
    live = dict(backbone.model.named_parameters())
    canonical = {name: lora_key_of(regex, name) for name in live}
    bottom_names = {k: n for n, k in canonical.items() if k is not None and key_layer(k) < split}
    top = {k: live[n] for n, k in canonical.items() if k is not None and key_layer(k) >= split}
    top.update(head_parameters(backbone, backbone.model))
    for p in live.values():
        p.requires_grad_(False)
    for p in top.values():
        p.requires_grad_(True)
    server_opt = torch.optim.AdamW(list(top.values()), lr=server.lr, betas=ADAMW_BETAS, weight_decay=cfg.weight_decay)
    _load_adamw_state(server_opt, top, server.params)
    device = next(model.parameters()).device
    own = [{n: t.params[k].to(device).clone().requires_grad_(True) for k, n in bottom_names.items()} for t in tasks]
    opts = [torch.optim.AdamW(list(p.values()), lr=t.lr, betas=ADAMW_BETAS, weight_decay=cfg.weight_decay)
            for p, t in zip(own, tasks)]
    sizes = [t.config.batch_size for t in tasks]
    steps = max(dataclasses.replace(cfg, batch_size=b).local_steps(len(partitions[t.device_id])) for b, t in zip(sizes, tasks))
    # exactly ``steps`` batches each (a device with fewer examples starts another epoch, in a new order)
    configs = [dataclasses.replace(cfg, batch_size=b, max_local_steps=steps, local_epochs=float(steps)) for b in sizes]
    plans = [local_batches(partitions[t.device_id], c, cfg.seed, t.round, t.device_id, data.lengths)
             for c, t in zip(configs, tasks)]
    rows = DeviceRows([derive_seed(cfg.seed, "dropout", t.round, t.device_id) for t in tasks])
    bottom_spec = _part_spec(spec, split, head=False)
    top_spec = _part_spec(spec, spec.num_layers - split, head=True)
    bottom_layout, top_layout = LoraLayout.all_layers(plan.rank, split), LoraLayout.all_layers(plan.rank, spec.num_layers - split)
    works: list[list[DeviceWork]] = [[] for _ in tasks]
    server_works: list[DeviceWork] = []
    losses: list[list[float]] = [[] for _ in tasks]
    server_losses, tokens, examples = [], [0] * len(tasks), [0] * len(tasks)
    bf16 = autocast_bf16(cfg.bf16, device)
    start = time.perf_counter()
    model.train()
    with device_dropout(model, rows):
        for k in range(steps):
            batches = [data.batch(p[k]) for p in plans]
            loss, device_losses = split_iteration(backbone, split, own, batches, rows, bf16=bf16)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(top.values()), cfg.max_grad_norm)
            server_opt.step()
            server_opt.zero_grad(set_to_none=True)
            for i, (params, opt) in enumerate(zip(own, opts)):
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                seqs, width = batches[i]["input_ids"].shape
                up, down = activation_bytes(seqs, width, spec.hidden_size)
                works[i].append(_iteration_work(bottom_spec, bottom_layout, seqs, width, up, down))
                losses[i].append(device_losses[i])
                tokens[i] += int(batches[i]["attention_mask"].sum())
                examples[i] += seqs  # fewer than b_i where a device holds fewer examples than its batch size
            width = max(b["input_ids"].shape[1] for b in batches)
            server_works.append(_iteration_work(top_spec, top_layout, sum(sizes), width, 0, 0))
            server_losses.append(float(loss))
    model.eval()
    wall = time.perf_counter() - start
    results: dict[int, DeviceResult] = {}
    classes = data.labels if isinstance(data, TokenizedData) else data.classes  # a generative task's, where it has them
    for i, t in enumerate(tasks):
        params = {k: own[i][n].detach().to("cpu", copy=True) for k, n in bottom_names.items()}
        results[t.device_id] = _result(t, params, works[i], losses[i], examples[i], tokens[i], wall, split * plan.rank,
                                       t.download_bytes, tensors_bytes(params))
        if classes is not None:  # MergeSFL's devices report their label counts (a privacy cost: docs)
            held = classes[np.asarray(partitions[t.device_id], dtype=int)]
            results[t.device_id].metrics["label_counts"] = np.bincount(held, minlength=int(classes.max()) + 1).tolist()
    top_params = {k: p.detach().to("cpu", copy=True) for k, p in top.items()}
    top_params.update(_adamw_state(server_opt, top))
    server_result = _result(server, top_params, server_works, server_losses, sum(examples), sum(tokens), wall,
                            (spec.num_layers - split) * plan.rank, 0, 0)
    server_result.metrics.update({"iterations": steps, "merged_batch": sum(sizes),
                                  "activation_upload_bytes": [sum(w[k].upload_bytes for w in works) for k in range(steps)],
                                  "activation_download_bytes": [sum(w[k].download_bytes for w in works) for k in range(steps)]})
    results[SERVER_ID] = server_result
    return results


def _result(task: DeviceTask, params: Tensors, works: list[DeviceWork], losses: list[float], examples: int, tokens: int,
            wall: float, rank_sum: int, download: int, upload: int) -> DeviceResult:
    total = _total_work(works, download, upload, rank_sum)
    return DeviceResult(device_id=task.device_id, round=task.round, params=params, num_examples=examples,
                        num_tokens=tokens, num_steps=len(works),
                        train_loss=float(np.mean(losses)) if losses else float("nan"), wall_time_s=wall,
                        metrics=loss_metrics(losses), work=total, iterations=works)
