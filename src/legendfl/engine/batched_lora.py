"""Several devices' LoRA adapters and heads on one frozen base, each applied to its own rows of the batch.

:class:`BatchedLoraLinear` wraps a targeted module of the shared backbone: it computes the frozen module once
for the whole batch and adds, to each device's rows, that device's own LoRA delta
``scaling * B_d (A_d dropout_d(x))`` (peft's ``Linear.forward`` for one adapter, written out; the equality with
peft is tested in ``tests/test_batched_engine.py``). A device has a pair only on its own layers, with its own
rank, so devices of different depths and rank distributions share the pass; no gradient reaches a device's
parameters from another device's rows. The factors of all devices are rank banks (``engine.parameter_bank``):
per module, A ``[N, r_max, in]`` and B ``[N, out, r_max]``, zero-padded (exactly) to the module's largest rank,
so all devices' deltas are two batched matmuls. :class:`PerDeviceLinear` does the same for a trainable head:
every device applies its own copy of the head's linear modules to its rows.

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
from torch.nn.utils.rnn import pad_sequence

from ..core.lora_layout import LoraLayout
from ..core.strategy import Tensors, lora_key
from ..models.backbone import Backbone
from ..models.keys import head_key
from .device_rows import DeviceRows, Segment, dropout_mask
from .parameter_bank import ParameterBank, to_device


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


def _select(bank: torch.Tensor, slots: list[int], cache: dict[tuple[int, ...], torch.Tensor]) -> torch.Tensor:
    """A bank's rows of these slots (the bank itself when that is all of them, in order); the index tensors are
    kept in ``cache``: a pass's slots repeat every step, so no copy to the device each time."""
    if slots == list(range(bank.shape[0])):
        return bank
    key = tuple(slots)
    if key not in cache:
        cache[key] = to_device(torch.tensor(slots), bank.device)
    return bank.index_select(0, cache[key])


def _equal_rows(segs: tuple[Segment, ...], x: torch.Tensor) -> bool:
    """Two or more devices whose rows cover ``x`` in order, equally many each: a ``[devices, rows, ...]`` view."""
    n = segs[0].stop - segs[0].start
    return len(segs) > 1 and segs[0].start == 0 and segs[-1].stop == x.shape[0] and all(g.stop - g.start == n for g in segs)


class BatchedLoraLinear(nn.Module):
    """A frozen module plus the LoRA factors of every device slot that has this layer, as bank parts ``lora_A``
    ``[N, r_max, in]`` and ``lora_B`` ``[N, out, r_max]`` (``engine.parameter_bank``; see the module doc)."""

    def __init__(self, base: nn.Module, rows: DeviceRows, scaling: float, dropout: float, lora_A: nn.Parameter,
                 lora_B: nn.Parameter, ranks: dict[int, int]) -> None:
        super().__init__()
        self.base, self.rows, self.scaling, self.dropout = base, rows, scaling, dropout
        self.lora_A, self.lora_B = lora_A, lora_B
        self.ranks = ranks  # slot -> its rank here (slots without a pair here are absent)
        self._index: dict[tuple[int, ...], torch.Tensor] = {}

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base(x, *args, **kwargs)
        if self.stackable(x):
            return result + self.stacked_delta(x).reshape(result.shape).to(result.dtype)
        segs = [g for g in self.rows.segments if g.slot in self.ranks]
        return _add_rows(result, self.rows, self.padded_deltas(x, segs)).to(result.dtype) if segs else result

    def factors(self, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The banks' rows of these slots."""
        return _select(self.lora_A, slots, self._index), _select(self.lora_B, slots, self._index)

    def stackable(self, x: torch.Tensor) -> bool:
        """Every row belongs to a device with a pair here, devices have equally many rows, no LoRA dropout: then
        all devices' deltas are two batched matmuls on a view of the input."""
        segs = self.rows.segments
        return not (self.dropout > 0.0 and self.training) and _equal_rows(segs, x) and all(g.slot in self.ranks for g in segs)

    def stacked_delta(self, x: torch.Tensor) -> torch.Tensor:
        """Each device's ``scaling * B (A x)`` on its rows, ranks zero-padded to the largest (exact: the padded
        rows of A and columns of B are zero, and no gradient reaches a device's parameters from the padding)."""
        segs = self.rows.segments
        a, b = self.factors([g.slot for g in segs])
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(a.dtype)  # peft casts the input to the adapter's dtype
        xs = x.reshape(len(segs), -1, x.shape[-1])
        return torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2)) * self.scaling

    def padded_deltas(self, x: torch.Tensor, segs: list[Segment]) -> dict[int, torch.Tensor]:
        """The deltas of these segments' devices (rows of unequal counts, LoRA dropout, or devices without a pair
        here in the batch): each device's rows, dropped out with its own masks, zero-padded to the longest and
        multiplied in two batched matmuls (one device: peft's two linears)."""
        x = x.to(self.lora_A.dtype)  # peft casts the input to the adapter's dtype
        if self.dropout > 0.0 and self.training:  # each device's own masks (on a GPU: one draw for all of them)
            x = x * dropout_mask(x, self.dropout, self.rows, segs)
        pieces = [x[seg.start:seg.stop] for seg in segs]
        if len(segs) == 1:
            a, b = self.lora_A[segs[0].slot], self.lora_B[segs[0].slot]
            return {segs[0].slot: F.linear(F.linear(pieces[0], a), b) * self.scaling}
        a, b = self.factors([g.slot for g in segs])
        flat = [p.reshape(-1, p.shape[-1]) for p in pieces]
        stacked = pad_sequence(flat, batch_first=True)  # (devices, longest, in)
        out = torch.bmm(torch.bmm(stacked, a.transpose(1, 2)), b.transpose(1, 2)) * self.scaling
        return {g.slot: out[j, :len(f)].reshape(*p.shape[:-1], out.shape[-1])
                for j, (g, f, p) in enumerate(zip(segs, flat, pieces))}


class PerDeviceLinear(nn.Module):
    """A head's linear module with one trainable copy per device slot (bank parts ``weight`` ``[N, out, in]`` and
    ``bias`` ``[N, out]``), each applied to its own rows."""

    def __init__(self, base: nn.Linear, rows: DeviceRows, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.base, self.rows, self.weight, self.bias = base, rows, weight, bias
        self._index: dict[tuple[int, ...], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        segs = self.rows.segments
        if _equal_rows(segs, x):
            slots = [g.slot for g in segs]  # devices of equal rows: one batched matmul
            weight = _select(self.weight, slots, self._index).transpose(1, 2)
            xs = x.reshape(len(segs), -1, x.shape[-1])
            out = torch.bmm(xs, weight) if self.bias is None else \
                torch.baddbmm(_select(self.bias, slots, self._index).unsqueeze(1), xs, weight)
            return out.reshape(*x.shape[:-1], out.shape[-1])
        return torch.cat([F.linear(x[g.start:g.stop], self.weight[g.slot], None if self.bias is None else self.bias[g.slot])
                          for g in segs], dim=0)


@dataclass
class SlotParameters:
    """One device's trainable tensors in a batched group: views of its corners of the bank, LoRA pairs by
    canonical key, head by head key."""

    lora: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    pairs: list[tuple[torch.Tensor, torch.Tensor]]

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
                   scaling: float, dropout: float) -> Iterator[tuple[ParameterBank, list[SlotParameters]]]:
    """Put every slot's LoRA (its ``layouts[slot]``, loaded from ``params[slot]``) and head into the backbone, all
    of them in one :class:`ParameterBank`; yields the bank and each slot's views of it."""
    model = backbone.model
    modules = sorted(backbone.linear_modules)
    ranks: dict[str, dict[int, int]] = {}  # module path -> slot -> rank
    shapes: dict[str, tuple[int, ...]] = {}
    kinds: dict[str, str] = {}  # module path -> its name within a block
    for slot, layout in enumerate(layouts):
        for layer in layout.layers:
            for module in modules:
                path = f"{backbone.block_prefix}.{layer}.{module}"
                ranks.setdefault(path, {})[slot], kinds[path] = layout.ranks[layer], module
    for path, by_slot in ranks.items():  # each module's bank is padded to its largest rank
        (fan_in, fan_out), r_max = backbone.linear_modules[kinds[path]], max(by_slot.values())
        shapes[f"{path}.A"], shapes[f"{path}.B"] = (r_max, fan_in), (fan_out, r_max)
    heads = head_modules(backbone)
    for path, module in heads.items():
        shapes[f"{path}.weight"] = tuple(module.weight.shape)
        if module.bias is not None:
            shapes[f"{path}.bias"] = tuple(module.bias.shape)
    dtypes = {next(model.get_submodule(p).parameters()).dtype for p in [*ranks, *heads]}  # peft keeps an adapter in its
    if len(dtypes) > 1:  # base layer's (float) dtype
        raise ValueError(f"the batched engine needs one dtype for every targeted module and the head, got {sorted(map(str, dtypes))}")
    ref = next(model.parameters())
    bank = ParameterBank(len(layouts), shapes, ref.device, dtypes.pop() if dtypes else ref.dtype)
    slots = [SlotParameters({}, {}, []) for _ in layouts]
    swapped: list[tuple[str, nn.Module]] = []
    try:
        for path, by_slot in ranks.items():
            wrapper = BatchedLoraLinear(model.get_submodule(path), rows, scaling, dropout, bank.parts[f"{path}.A"],
                                        bank.parts[f"{path}.B"], by_slot)
            swapped.append((path, _swap(model, path, wrapper)))
        for slot, layout in enumerate(layouts):
            for layer in layout.layers:
                for module in modules:
                    path = f"{backbone.block_prefix}.{layer}.{module}"
                    ka, kb = lora_key(layer, module, "A"), lora_key(layer, module, "B")
                    if ka not in params[slot] or kb not in params[slot]:
                        raise KeyError(f"no tensor given for LoRA parameter {ka}")
                    a_in, b_in = params[slot][ka], params[slot][kb]
                    if a_in.shape[0] != layout.ranks[layer] or b_in.shape[-1] != layout.ranks[layer]:
                        raise ValueError(f"{ka}: rank {a_in.shape[0]} (B: {b_in.shape[-1]}) does not match the layout's "
                                         f"{layout.ranks[layer]}")
                    a, b = bank.load(f"{path}.A", slot, a_in), bank.load(f"{path}.B", slot, b_in)
                    slots[slot].lora[ka], slots[slot].lora[kb] = a, b
                    slots[slot].pairs.append((a, b))
        for path, module in heads.items():
            weight, bias = bank.parts[f"{path}.weight"], bank.parts.get(f"{path}.bias")
            swapped.append((path, _swap(model, path, PerDeviceLinear(module, rows, weight, bias))))
            w_key, b_key = head_key(f"{path}.weight"), head_key(f"{path}.bias")
            for slot in range(len(layouts)):
                slots[slot].head[w_key] = bank.load(f"{path}.weight", slot, params[slot].get(w_key, backbone.spec.head[w_key]))
                if bias is not None:
                    slots[slot].head[b_key] = bank.load(f"{path}.bias", slot, params[slot].get(b_key, backbone.spec.head[b_key]))
        yield bank, slots
    finally:
        for path, original in reversed(swapped):
            _swap(model, path, original)
        model.eval()
