"""Several devices' LoRA adapters and heads on one frozen base, each applied to its own rows of the batch.

:class:`BatchedLoraLinear` wraps a targeted module of the shared backbone: it computes the frozen module once
for the whole batch and adds, to each device's rows, that device's own LoRA delta
``scaling * B_d (A_d dropout_d(x))`` (peft's ``Linear.forward`` for one adapter, written out; the equality with
peft is tested in ``tests/test_batched_engine.py``). A device has a pair only on its own layers, with its own
rank, so devices of different depths and rank distributions share the pass; no gradient reaches a device's
parameters from another device's rows. :class:`PerDeviceLinear` does the same for a trainable head: every
device applies its own copy of the head's linear modules to its rows.

:func:`inject_batched` puts these modules into the backbone for a group of devices and takes them out again
(the base model is never copied).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..core.lora_layout import LoraLayout
from ..core.strategy import Tensors, lora_key
from ..models.backbone import Backbone
from ..models.keys import head_key
from .device_rows import DeviceRows, segment_dropout


def _add_rows(base: torch.Tensor, rows: DeviceRows, deltas: dict[int, torch.Tensor]) -> torch.Tensor:
    """``base`` with ``deltas[slot]`` added to each slot's rows (rows of other slots unchanged)."""
    if not deltas:
        return base
    pieces, at = [], 0
    for seg in rows.segments:
        if seg.start > at:
            pieces.append(base[at:seg.start])
        part = base[seg.start:seg.stop]
        pieces.append(part + deltas[seg.slot].to(part.dtype) if seg.slot in deltas else part)
        at = seg.stop
    if at < base.shape[0]:
        pieces.append(base[at:])
    return torch.cat(pieces, dim=0)


class BatchedLoraLinear(nn.Module):
    """A frozen module plus one LoRA pair per device slot that has this layer (see the module doc)."""

    def __init__(self, base: nn.Module, rows: DeviceRows, scaling: float, dropout: float) -> None:
        super().__init__()
        self.base, self.rows, self.scaling, self.dropout = base, rows, scaling, dropout
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()

    def add(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
        ref = next(self.base.parameters())  # peft keeps an adapter in its base layer's (float) dtype
        self.lora_A[str(slot)] = nn.Parameter(a.detach().to(ref.device, ref.dtype).clone())
        self.lora_B[str(slot)] = nn.Parameter(b.detach().to(ref.device, ref.dtype).clone())
        return self.lora_A[str(slot)], self.lora_B[str(slot)]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base(x, *args, **kwargs)
        if self.stackable(x):
            return result + self.stacked_delta(x).reshape(result.shape).to(result.dtype)
        deltas = {}
        for seg in self.rows.segments:
            key = str(seg.slot)
            if key not in self.lora_A:
                continue
            xs = x[seg.start:seg.stop]
            a, b = self.lora_A[key], self.lora_B[key]
            xs = xs.to(a.dtype)  # peft casts the input to the adapter's dtype
            if self.dropout > 0.0 and self.training:
                xs = segment_dropout(xs, self.dropout, self.rows, seg)
            deltas[seg.slot] = F.linear(F.linear(xs, a), b) * self.scaling
        return _add_rows(result, self.rows, deltas).to(result.dtype)

    def stackable(self, x: torch.Tensor) -> bool:
        """Every row belongs to a device with a pair here, devices have equally many rows, no LoRA dropout: then
        all devices' deltas are two batched matmuls (a few kernels instead of two per device)."""
        segs = self.rows.segments
        if len(segs) < 2 or (self.dropout > 0.0 and self.training) or segs[0].start != 0 or segs[-1].stop != x.shape[0]:
            return False
        n = segs[0].stop - segs[0].start
        return all(str(g.slot) in self.lora_A and g.stop - g.start == n for g in segs)

    def stacked_delta(self, x: torch.Tensor) -> torch.Tensor:
        """Each device's ``scaling * B (A x)`` on its rows, ranks zero-padded to the largest (exact: the padded
        rows of A and columns of B are zero, and no gradient reaches a device's parameters from the padding)."""
        segs = self.rows.segments
        a_list = [self.lora_A[str(g.slot)] for g in segs]
        b_list = [self.lora_B[str(g.slot)] for g in segs]
        r_max = max(a.shape[0] for a in a_list)
        a = torch.stack([F.pad(t, (0, 0, 0, r_max - t.shape[0])) for t in a_list])  # (devices, r, in)
        b = torch.stack([F.pad(t, (0, r_max - t.shape[1])) for t in b_list])  # (devices, out, r)
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(a.dtype)  # peft casts the input to the adapter's dtype
        xs = x.reshape(len(segs), -1, x.shape[-1])
        return torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2)) * self.scaling


class PerDeviceLinear(nn.Module):
    """A head's linear module with one trainable copy per device slot, each applied to its own rows."""

    def __init__(self, base: nn.Linear, rows: DeviceRows) -> None:
        super().__init__()
        self.base, self.rows = base, rows
        self.weight = nn.ParameterDict()
        self.bias = nn.ParameterDict()

    def add(self, slot: int, weight: torch.Tensor, bias: torch.Tensor | None) -> list[nn.Parameter]:
        ref = self.base.weight
        self.weight[str(slot)] = nn.Parameter(weight.detach().to(ref.device, ref.dtype).clone())
        if bias is not None:
            self.bias[str(slot)] = nn.Parameter(bias.detach().to(ref.device, ref.dtype).clone())
        return [self.weight[str(slot)]] + ([self.bias[str(slot)]] if bias is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = []
        for seg in self.rows.segments:
            key = str(seg.slot)
            pieces.append(F.linear(x[seg.start:seg.stop], self.weight[key], self.bias[key] if key in self.bias else None))
        return torch.cat(pieces, dim=0)


@dataclass
class SlotParameters:
    """One device's trainable tensors in a batched group: LoRA pairs by canonical key, head by head key."""

    lora: dict[str, nn.Parameter]
    head: dict[str, nn.Parameter]
    pairs: list[tuple[nn.Parameter, nn.Parameter]]

    def trainable(self) -> list[nn.Parameter]:
        return [*self.lora.values(), *self.head.values()]

    def upload(self) -> Tensors:
        out = {k: p.detach().to("cpu", copy=True) for k, p in self.lora.items()}
        out.update({k: p.detach().to("cpu", copy=True) for k, p in self.head.items()})
        return out


def head_modules(backbone: Backbone) -> dict[str, nn.Module]:
    """The modules holding the head's parameters (module path -> module)."""
    paths = sorted({n.rsplit(".", 1)[0] for n in backbone.head_names})
    return {p: backbone.model.get_submodule(p) for p in paths}


def batchable_head(backbone: Backbone) -> bool:
    """True if every head parameter belongs to an ``nn.Linear`` (so each device can have its own copy)."""
    return all(type(m) is nn.Linear for m in head_modules(backbone).values())


def _swap(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


@contextmanager
def inject_batched(backbone: Backbone, layouts: list[LoraLayout], params: list[Tensors], rows: DeviceRows,
                   scaling: float, dropout: float) -> Iterator[list[SlotParameters]]:
    """Put every slot's LoRA (its ``layouts[slot]``, loaded from ``params[slot]``) and head into the backbone."""
    model = backbone.model
    slots = [SlotParameters({}, {}, []) for _ in layouts]
    swapped: list[tuple[str, nn.Module]] = []
    try:
        wrappers: dict[str, BatchedLoraLinear] = {}
        for slot, layout in enumerate(layouts):
            for layer in layout.layers:
                for module in sorted(backbone.linear_modules):
                    path = f"{backbone.block_prefix}.{layer}.{module}"
                    if path not in wrappers:
                        wrappers[path] = BatchedLoraLinear(model.get_submodule(path), rows, scaling, dropout)
                        swapped.append((path, _swap(model, path, wrappers[path])))
                    ka, kb = lora_key(layer, module, "A"), lora_key(layer, module, "B")
                    if ka not in params[slot] or kb not in params[slot]:
                        raise KeyError(f"no tensor given for LoRA parameter {ka}")
                    a, b = wrappers[path].add(slot, params[slot][ka], params[slot][kb])
                    if a.shape[0] != layout.ranks[layer]:
                        raise ValueError(f"{ka}: rank {a.shape[0]} does not match the layout's {layout.ranks[layer]}")
                    slots[slot].lora[ka], slots[slot].lora[kb] = a, b
                    slots[slot].pairs.append((a, b))
        for path, module in head_modules(backbone).items():
            wrapper = PerDeviceLinear(module, rows)
            swapped.append((path, _swap(model, path, wrapper)))
            for slot in range(len(layouts)):
                w_key, b_key = head_key(f"{path}.weight"), head_key(f"{path}.bias")
                weight = params[slot].get(w_key, backbone.spec.head[w_key])
                bias = params[slot].get(b_key, backbone.spec.head.get(b_key)) if module.bias is not None else None
                new = wrapper.add(slot, weight, bias)
                slots[slot].head[w_key] = new[0]
                if bias is not None:
                    slots[slot].head[b_key] = new[1]
        yield slots
    finally:
        for path, original in reversed(swapped):
            _swap(model, path, original)
        model.eval()
