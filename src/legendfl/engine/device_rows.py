"""Which rows of a batch belong to which device, and dropout drawn from each device's own generator.

One batch may carry several devices' examples (the batched engine, ``engine.batched_training``) or one
device's (the sequential trainer). :class:`DeviceRows` names, for the current step, each device's slot, its
rows ``[start, stop)`` and its own padded width (the group's batch is padded to the widest device).

:func:`device_dropout` replaces every ``nn.Dropout`` of a model, for the duration of a context, by dropout
whose masks come from each device's own ``torch.Generator`` (seeded from (seed, "dropout", round, device)).
A device's mask covers its own rows at its own width: sequence dimensions are found by rank (2-D: none;
3-D ``(batch, tokens, hidden)``: dim 1; 4-D ``(batch, heads, tokens, tokens)``: dims 2 and 3), so the draws
do not depend on how wide the other devices' examples are. Both engines use it, so a device's dropout masks
are the same whether it trains alone, in the sequential engine, or batched with any other devices. Attention
dropout must then be an ``nn.Dropout`` (eager attention, see ``models.backbone``).

On a GPU (:data:`COUNTER_MASK_DEVICES`) the masks of all devices of a step come from one counter-based draw
instead, a few elementwise kernels whatever the number of devices: each element's uniform is a hash of its
device's key (the device's seed and how many dropout calls it has made) and its index inside the device's own
part, so it is again a function of (seed, round, device, step, element) only. On a CPU the per-device
generators stay: ``bernoulli_`` drew 3M elements in 20 ms against the hash's 99 ms here (2 cores, 2026-12-02).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from .parameter_bank import to_device


@dataclass(frozen=True)
class Segment:
    slot: int  # the device's index in its group
    start: int
    stop: int
    width: int  # the device's own padded width this step (<= the batch's width)


@dataclass
class DeviceRows:
    """Each slot's dropout generator seed and, during a step, the step's row segments.

    The modules that read the segments (batched LoRA, per-device heads, dropout) sit inside a transformers
    model whose forward cannot carry them, so an engine hands them over for one step only: ``with
    rows.step(segments): model(...)``. Outside a step reading them raises, so no module can use a stale step."""

    seeds: list[int]
    _segments: tuple[Segment, ...] | None = None
    _generators: dict = field(default_factory=dict)
    _calls: dict = field(default_factory=dict)  # slot -> dropout calls it has drawn masks for (counter-based draws)
    _layouts: dict = field(default_factory=dict)  # during a step: the per-row index tensors of counter-based draws

    @property
    def segments(self) -> tuple[Segment, ...]:
        if self._segments is None:
            raise RuntimeError("device rows read outside a step (DeviceRows.step)")
        return self._segments

    @contextmanager
    def step(self, segments: Sequence[Segment]) -> Iterator[tuple[Segment, ...]]:
        """The segments of one forward pass (the backward pass reads none)."""
        if self._segments is not None:
            raise RuntimeError("a step of these device rows is already running")
        self._segments = tuple(segments)
        try:
            yield self._segments
        finally:
            self._segments = None
            self._layouts.clear()

    def generator(self, slot: int, device: torch.device) -> torch.Generator:
        key = (slot, str(device))
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seeds[slot])
        return self._generators[key]

    def keys(self, segments: Sequence[Segment]) -> list[int]:
        """Each segment's key for its next counter-based draw (its device's seed and call count, mixed)."""
        out = []
        for seg in segments:
            call = self._calls.get(seg.slot, 0)
            self._calls[seg.slot] = call + 1
            out.append(_mix64(self.seeds[seg.slot] * 0x9E3779B97F4A7C15 + call))
        return out


def _own_view(x: torch.Tensor, seg: Segment) -> tuple[slice, ...]:
    """Index of a segment's own part of ``x`` (its rows, and its own width in the sequence dimensions)."""
    rows = slice(seg.start, seg.stop)
    w = slice(0, seg.width)
    if x.dim() == 3:
        return rows, w
    if x.dim() == 4:
        return rows, slice(None), w, w
    return (rows,)


COUNTER_MASK_DEVICES = ("cuda",)  # device types whose masks come from the counter-based draw (see the module doc)
_M32 = 0xFFFFFFFF


def _mix64(z: int) -> int:
    """SplitMix64's finaliser (host side, Python integers)."""
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def _mul32(v: torch.Tensor, c: int) -> torch.Tensor:
    """``v * c mod 2**32`` for ``v`` in [0, 2**32) held in int64, without overflowing int64."""
    return (v * (c & 0xFFFF) + (((v * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _hash32(v: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) of ``v`` in [0, 2**32), elementwise, in int64."""
    v = v ^ (v >> 16)
    v = _mul32(v, 0x7FEB352D)
    v = v ^ (v >> 15)
    v = _mul32(v, 0x846CA68B)
    return v ^ (v >> 16)


def _row_layout(rows: DeviceRows, segments: Sequence[Segment], n: int, device: torch.device) -> torch.Tensor:
    """``[4, n]`` on ``device``: each row's owner flag, index within its segment, segment's width and segment's
    position in ``segments``; built once per step for each set of segments (every dropout call of a step
    shares it), on every call outside a step."""
    key = (tuple(segments), n, str(device))
    if key in rows._layouts:
        return rows._layouts[key]
    owner, local, width, which = (torch.zeros(n, dtype=torch.int64) for _ in range(4))
    for i, seg in enumerate(segments):
        local[seg.start:seg.stop] = torch.arange(seg.stop - seg.start)
        width[seg.start:seg.stop], owner[seg.start:seg.stop], which[seg.start:seg.stop] = seg.width, 1, i
    layout = to_device(torch.stack([owner, local, width, which]), device)
    if rows._segments is not None:
        rows._layouts[key] = layout
    return layout


def counter_dropout_mask(x: torch.Tensor, p: float, rows: DeviceRows, segments: Sequence[Segment]) -> torch.Tensor:
    """:func:`dropout_mask` drawn by a counter-based hash for all segments at once (see the module doc)."""
    keys = torch.tensor([[key & _M32, key >> 32] for key in rows.keys(segments)], dtype=torch.int64)
    owner, local, width, which = _row_layout(rows, segments, x.shape[0], x.device)
    key_lo, key_hi = to_device(keys, x.device)[which].unbind(-1)  # rows of no segment: not owned, never dropped
    owner, local, width, key_lo, key_hi = (t.view(-1, *([1] * (x.dim() - 1))) for t in (owner, local, width, key_lo, key_hi))
    if x.dim() == 4:  # (rows, heads, tokens, tokens): the own part is (rows, heads, width, width)
        head = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        t1 = torch.arange(x.shape[2], device=x.device).view(1, 1, -1, 1)
        t2 = torch.arange(x.shape[3], device=x.device).view(1, 1, 1, -1)
        index = ((local * x.shape[1] + head) * width + t1) * width + t2
        own = (owner > 0) & (t1 < width) & (t2 < width)
    elif x.dim() == 3:  # (rows, tokens, hidden): the own part is (rows, width, hidden)
        t = torch.arange(x.shape[1], device=x.device).view(1, -1, 1)
        hidden = torch.arange(x.shape[2], device=x.device).view(1, 1, -1)
        index = (local * width + t) * x.shape[2] + hidden
        own = (owner > 0) & (t < width)
    else:  # (rows, features...): the own part is the rows
        index = local * x[0].numel() + torch.arange(x[0].numel(), device=x.device).view(1, *x.shape[1:])
        own = owner > 0
    uniform = (_hash32(_hash32((index & _M32) ^ key_lo) ^ key_hi) >> 8).to(torch.float32) * (1.0 / 2**24)
    keep = (uniform >= p) | ~own
    return (keep.to(torch.float32) / (1.0 - p)).to(x.dtype)


def dropout_mask(x: torch.Tensor, p: float, rows: DeviceRows, segments: list[Segment]) -> torch.Tensor:
    """A keep-mask (scaled by 1/(1-p)) for ``x``; each segment's own part drawn from its device's generator (on a
    GPU: :func:`counter_dropout_mask`)."""
    if x.device.type in COUNTER_MASK_DEVICES:
        return counter_dropout_mask(x, p, rows, segments)
    mask = torch.ones(x.shape, dtype=torch.float32, device=x.device)
    for seg in segments:
        view = _own_view(x, seg)
        own = mask[view]
        own.bernoulli_(1.0 - p, generator=rows.generator(seg.slot, x.device))
    return (mask / (1.0 - p)).to(x.dtype)


class DeviceDropout(nn.Module):
    """``nn.Dropout`` with per-device masks (see the module doc)."""

    def __init__(self, p: float, rows: DeviceRows) -> None:
        super().__init__()
        self.p, self.rows = p, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * dropout_mask(x, self.p, self.rows, self.rows.segments)


@contextmanager
def device_dropout(model: nn.Module, rows: DeviceRows) -> Iterator[None]:
    """Swap every ``nn.Dropout`` of ``model`` for a :class:`DeviceDropout` on ``rows``; restore on exit."""
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                replacement = DeviceDropout(child.p, rows)
                replacement.train(child.training)
                setattr(module, child_name, replacement)
                swapped.append((module, child_name, child))
    try:
        yield
    finally:
        for module, child_name, child in swapped:
            setattr(module, child_name, child)
