"""Structured pruning of encoder blocks: whole attention heads and whole FFN channels, removed physically.

FedSpine (issue 23) prunes and tunes: a device trains LoRA on a model from which whole groups are gone, so its
compute and memory really shrink. A group is one attention head (its rows of query, key and value and its
columns of the attention output) or one FFN channel (its row of the intermediate projection and its column of
the output projection). Heads are removed with transformers' own ``prune_heads`` (which records them in
``config.pruned_heads``, so a saved model loads pruned with plain transformers); FFN channels with
transformers' ``prune_linear_layer`` on the two projections. Both keep the modules ``nn.Linear``, so peft's
LoRA wraps a pruned model as any other.

Indices: heads are named by their index in the unpruned model (transformers' convention, as in
``config.pruned_heads``); channels by their index in the module as it is now. A saved model loads with plain
transformers only if every layer keeps the same number of channels (``config.intermediate_size`` is one number):
:func:`pruned_config_for_export` says so by name otherwise.

Supported: BERT-family encoders (``prune_heads`` implemented; blocks with ``attention``, ``intermediate.dense``
and ``output.dense``). Decoders (Llama, GPT-2) are refused by name: transformers prunes no heads there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from transformers.pytorch_utils import prune_linear_layer

from ..core.files import staged_directory


def encoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a BERT-family encoder, or a one-line error naming what is missing."""
    base = getattr(model, "base_model", model)
    blocks = getattr(getattr(base, "encoder", None), "layer", None)
    if blocks is None or not hasattr(base, "_prune_heads"):
        raise ValueError(f"structured pruning supports BERT-family encoders (heads pruned by transformers); "
                         f"{type(model).__name__} is not one")
    for i, block in enumerate(blocks):
        if not (hasattr(block, "attention") and hasattr(getattr(block, "intermediate", None), "dense")
                and hasattr(getattr(block, "output", None), "dense")):
            raise ValueError(f"block {i} of {type(model).__name__} lacks attention, intermediate.dense or output.dense")
    return list(blocks)


def structure(model: torch.nn.Module) -> dict[int, tuple[int, int]]:
    """Layer -> (attention heads kept, FFN channels kept)."""
    return {i: (b.attention.self.num_attention_heads, b.intermediate.dense.out_features)
            for i, b in enumerate(encoder_blocks(model))}


def _indices(name: str, layer: int, keep: Sequence[int], size: int) -> list[int]:
    kept = sorted(set(int(k) for k in keep))
    if not kept:
        raise ValueError(f"{name} of layer {layer}: keep at least one (got none)")
    if kept[0] < 0 or kept[-1] >= size:
        raise ValueError(f"{name} of layer {layer} must be in [0, {size - 1}], got {kept}")
    return kept


def prune_encoder(model: torch.nn.Module, keep_heads: Mapping[int, Sequence[int]] | None = None,
                  keep_channels: Mapping[int, Sequence[int]] | None = None) -> torch.nn.Module:
    """Keep only these heads (by unpruned index) and FFN channels (by current index) in these layers; other
    layers are left whole. In place; returns the model."""
    blocks = encoder_blocks(model)
    heads_total = model.config.num_attention_heads
    remove: dict[int, list[int]] = {}
    for layer, keep in (keep_heads or {}).items():
        if not 0 <= layer < len(blocks):
            raise ValueError(f"keep_heads names layer {layer}; the model has layers 0..{len(blocks) - 1}")
        kept = set(_indices("heads", layer, keep, heads_total))
        gone = set(model.config.pruned_heads.get(layer, ())) | set(model.config.pruned_heads.get(str(layer), ()))
        if kept & gone:
            raise ValueError(f"heads of layer {layer}: {sorted(kept & gone)} were pruned already")
        remove[layer] = sorted(set(range(heads_total)) - kept - gone)
    model.prune_heads({layer: heads for layer, heads in remove.items() if heads})
    for layer, keep in (keep_channels or {}).items():
        if not 0 <= layer < len(blocks):
            raise ValueError(f"keep_channels names layer {layer}; the model has layers 0..{len(blocks) - 1}")
        block = blocks[layer]
        index = torch.tensor(_indices("channels", layer, keep, block.intermediate.dense.out_features))
        block.intermediate.dense = prune_linear_layer(block.intermediate.dense, index, dim=0)
        block.output.dense = prune_linear_layer(block.output.dense, index, dim=1)
    return model


def pruned_config_for_export(model: torch.nn.Module):
    """The model's config with ``intermediate_size`` set to the pruned width, so that ``save_pretrained`` output
    loads with plain transformers (heads are in ``config.pruned_heads`` already); refused if layers differ."""
    widths = {channels for _, channels in structure(model).values()}
    if len(widths) != 1:
        raise ValueError(f"a pruned model loads with plain transformers only if every layer keeps the same number of "
                         f"FFN channels (config.intermediate_size is one number); got {sorted(widths)}")
    model.config.intermediate_size = widths.pop()
    return model.config


def save_pruned(model: torch.nn.Module, out_dir: str | Path, tokenizer=None) -> None:
    """Save a pruned model (any LoRA merged already) where plain transformers loads it,
    ``AutoModelForSequenceClassification.from_pretrained(out_dir)``: its config (pruned heads, FFN width), weights
    and tokenizer. Written to a sibling folder first and renamed, so ``out_dir`` is never left half-written."""
    pruned_config_for_export(model)
    with staged_directory(out_dir) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
