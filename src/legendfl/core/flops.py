"""FLOPs of the work a device really does, counted from the model's shapes and the token counts.

Per token (one multiply-add = 2 FLOPs), for a batch padded to ``seq_len``:

- forward of one transformer layer: ``2 * sum(in*out)`` over its linear modules plus attention scores and
  mixing ``4 * seq_len * hidden``;
- forward of a LoRA pair of rank r on an (in, out) module: ``2 * r * (in + out)``;
- backward: nothing below the shallowest trained module (no gradient is computed there). Each layer whose
  frozen weights lie above a trained module propagates activation gradients through them, which costs
  about one forward of that layer: for LoRA every layer from the shallowest LoRA layer up to the output;
  for a bottleneck adapter at a block's output (``adapters_at_block_output``) the layers *above* its
  block, since the gradient its parameters need never enters the frozen weights of its own block. Each
  trained module costs twice its forward (gradient of its input and of its weights). Full fine-tuning
  costs two forwards per layer (inputs and weights).
- the head: twice its forward in backward. A decoder's frozen LM head (``ModelSpec.output_projection``)
  projects every token: ``2 * vocab * hidden`` per token forward, and as much again in backward (the gradient
  of its input; its weights are frozen) whenever anything is trained. Embeddings are lookups, not counted.
"""
from __future__ import annotations

from typing import NamedTuple

from .lora_layout import LoraLayout
from .strategy import ModelSpec


def layer_forward_flops(spec: ModelSpec, tokens: int, seq_len: int) -> float:
    linear = sum(i * o for i, o in spec.linear_modules.values())
    return float(tokens) * (2.0 * linear + 4.0 * seq_len * spec.hidden_size)


def lora_forward_flops(spec: ModelSpec, rank: int, tokens: int) -> float:
    return float(tokens) * 2.0 * rank * sum(i + o for i, o in spec.linear_modules.values())


def head_forward_flops(spec: ModelSpec, sequences: int) -> float:
    return 2.0 * sequences * sum(t.numel() for k, t in spec.head.items() if k.endswith("weight"))


def output_forward_flops(spec: ModelSpec, tokens: int) -> float:
    """A decoder's LM-head projection of every token (0 for an encoder)."""
    return 2.0 * tokens * spec.output_projection


class BatchFlops(NamedTuple):
    """FLOPs of one training batch, and the parts a measured latency profile prices separately."""

    forward: float
    backward: float
    layer_forward: float  # one frozen transformer layer's forward over this batch
    trainable_forward: float  # forward of the trainable modules (LoRA pairs, adapters) over all layers


def batch_work(spec: ModelSpec, layout: LoraLayout | None, sequences: int, seq_len: int,
               *, full: bool = False, extra_forward_per_layer: dict[int, float] | None = None) -> BatchFlops:
    """FLOPs of one training batch of ``sequences`` x ``seq_len`` padded tokens (see the module doc).

    ``layout`` None with ``full=False`` means inference only (no backward). ``extra_forward_per_layer``
    adds per-layer forward FLOPs of bottleneck adapters at the output of those blocks: counted like LoRA,
    except that the backward traverses only the frozen layers above the lowest adapted block
    (:func:`traversed_layers`).
    """
    tokens = sequences * seq_len
    per_layer = layer_forward_flops(spec, tokens, seq_len)
    output = output_forward_flops(spec, tokens)
    forward = spec.num_layers * per_layer + head_forward_flops(spec, sequences) + output
    if full:
        backward = 2.0 * spec.num_layers * per_layer + 2.0 * head_forward_flops(spec, sequences) + output
        return BatchFlops(forward, backward, per_layer, 0.0)
    backward = 0.0
    trained: dict[int, float] = {}
    if layout is not None:
        for layer, rank in layout.ranks.items():
            trained[layer] = trained.get(layer, 0.0) + lora_forward_flops(spec, rank, tokens)
    for layer, extra in (extra_forward_per_layer or {}).items():
        trained[layer] = trained.get(layer, 0.0) + extra
    forward += sum(trained.values())
    if trained:
        depth = traversed_layers(spec.num_layers, layout.ranks if layout is not None else (), extra_forward_per_layer or ())
        backward = depth * per_layer + 2.0 * sum(trained.values()) + 2.0 * head_forward_flops(spec, sequences) + output
    return BatchFlops(forward, backward, per_layer, sum(trained.values()))


def traversed_layers(num_layers: int, lora_layers, adapter_layers) -> int:
    """Layers whose frozen weights the backward pass traverses: from the shallowest LoRA layer up, or from
    the block above the shallowest output adapter (its own block's weights get no gradient), whichever is lower."""
    starts = [int(l) for l in lora_layers] + [int(l) + 1 for l in adapter_layers]
    return num_layers - min(starts) if starts else 0


def batch_flops(spec: ModelSpec, layout: LoraLayout | None, sequences: int, seq_len: int,
                *, full: bool = False, extra_forward_per_layer: dict[int, float] | None = None) -> tuple[float, float]:
    """(forward, backward) FLOPs of one training batch (:func:`batch_work` without the parts)."""
    work = batch_work(spec, layout, sequences, seq_len, full=full, extra_forward_per_layer=extra_forward_per_layer)
    return work.forward, work.backward
