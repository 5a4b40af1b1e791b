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
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn


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

    def generator(self, slot: int, device: torch.device) -> torch.Generator:
        key = (slot, str(device))
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seeds[slot])
        return self._generators[key]


def _own_view(x: torch.Tensor, seg: Segment) -> tuple[slice, ...]:
    """Index of a segment's own part of ``x`` (its rows, and its own width in the sequence dimensions)."""
    rows = slice(seg.start, seg.stop)
    w = slice(0, seg.width)
    if x.dim() == 3:
        return rows, w
    if x.dim() == 4:
        return rows, slice(None), w, w
    return (rows,)


def dropout_mask(x: torch.Tensor, p: float, rows: DeviceRows, segments: list[Segment]) -> torch.Tensor:
    """A keep-mask (scaled by 1/(1-p)) for ``x``; each segment's own part drawn from its device's generator."""
    mask = torch.ones(x.shape, dtype=torch.float32, device=x.device)
    for seg in segments:
        view = _own_view(x, seg)
        own = mask[view]
        own.bernoulli_(1.0 - p, generator=rows.generator(seg.slot, x.device))
    return (mask / (1.0 - p)).to(x.dtype)


def segment_dropout(xs: torch.Tensor, p: float, rows: DeviceRows, seg: Segment) -> torch.Tensor:
    """Dropout on ``xs``, a tensor holding only ``seg``'s rows (the same draws as on the whole batch)."""
    return xs * dropout_mask(xs, p, rows, [Segment(seg.slot, 0, seg.stop - seg.start, seg.width)])


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
