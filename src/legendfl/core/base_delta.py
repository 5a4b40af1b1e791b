"""Changes to the frozen weights that a device receives: FLoRA merges each round's stacked LoRA into them,
FedEx-LoRA its aggregation residual.

A :class:`BaseDelta` is what a task carries of them (``DeviceTask.base_delta``): the change the device already
holds (``held``, dense, merged in rounds it took part in; not sent again, so not priced) and the change it
receives this round (``new``, as low-rank factors: per linear module ``{layer}.{module}.delta_A`` (r x in) and
``delta_B`` (out x r), the change being ``delta_B @ delta_A``; priced as sent). The device adds
``held + delta_B @ delta_A`` to each module's weight before it trains and takes it out again afterwards.

:class:`BaseDeltaLedger` is the server's side: the accumulated change, each round's increment as factors, and the
round each device last took part in, so that a device is sent the increments it missed (or, where they would
take more bytes than the dense change, the dense change itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .strategy import Tensors, tensors_bytes

DELTA_A, DELTA_B = "delta_A", "delta_B"
MERGED_LORA = "merged-lora"  # the client method that applies a task's change (methods/merged_lora.py)


def stem_of(key: str) -> str:
    """``{layer}.{module}`` of a ``...delta_A``/``...delta_B`` (or ``...lora_A``/``lora_B``) key."""
    return key.rpartition(".")[0]


def factors_dense(factors: Tensors) -> dict[str, torch.Tensor]:
    """``{layer}.{module}`` -> ``delta_B @ delta_A`` (float64)."""
    return {stem_of(k): factors[f"{stem_of(k)}.{DELTA_B}"].double() @ a.double() for k, a in factors.items()
            if k.endswith(DELTA_A)}


def concat_factors(parts: list[Tensors]) -> Tensors:
    """The factors of a sum of changes: A's stacked along the rank, B's side by side (sum_i B_i A_i = [B_i] [A_i])."""
    out: Tensors = {}
    stems = sorted({stem_of(k) for p in parts for k in p})
    for stem in stems:
        a = [p[f"{stem}.{DELTA_A}"] for p in parts if f"{stem}.{DELTA_A}" in p]
        b = [p[f"{stem}.{DELTA_B}"] for p in parts if f"{stem}.{DELTA_B}" in p]
        out[f"{stem}.{DELTA_A}"] = torch.cat(a, dim=0).contiguous()
        out[f"{stem}.{DELTA_B}"] = torch.cat(b, dim=1).contiguous()
    return out


@dataclass
class BaseDelta:
    """The change to the frozen weights a task carries (see the module doc)."""

    held: dict[str, torch.Tensor] = field(default_factory=dict)  # {layer}.{module} -> dense change already held
    new: Tensors = field(default_factory=dict)  # {layer}.{module}.delta_A / .delta_B received this round
    new_dense: dict[str, torch.Tensor] = field(default_factory=dict)  # received as is, where factors would be larger

    @property
    def download_bytes(self) -> int:
        return tensors_bytes(self.new) + tensors_bytes(self.new_dense)

    def dense(self) -> dict[str, torch.Tensor]:
        """``{layer}.{module}`` -> the whole change the device applies (float32)."""
        out = {stem: v.double() for stem, v in self.held.items()}
        for stem, change in [*factors_dense(self.new).items(), *self.new_dense.items()]:
            out[stem] = out[stem] + change.double() if stem in out else change.double()
        return {stem: v.float() for stem, v in out.items()}


@dataclass
class BaseDeltaLedger:
    """The server's record of the change to the frozen weights (checkpointed with the strategy).

    The increment made when round r is aggregated reaches the devices in round r + 1 or later: a device that last
    took part in round s holds every increment made before s and is sent those made in round s or later."""

    total: dict[str, torch.Tensor] = field(default_factory=dict)  # {layer}.{module} -> accumulated change (float64)
    increments: list[tuple[int, Tensors]] = field(default_factory=list)  # (round made, factors), newest last
    dropped_through: int = 0  # the latest round whose increment is no longer kept (0: none dropped)
    last_round: dict[int, int] = field(default_factory=dict)  # device -> the round it last took part in

    def add(self, rnd: int, factors: Tensors) -> None:
        """Fold round ``rnd``'s change (factors) into the total. Increments are kept while all kept ones together
        take fewer bytes than the dense change; a device that missed more is sent the dense change."""
        for stem, product in factors_dense(factors).items():
            self.total[stem] = self.total[stem] + product if stem in self.total else product
        self.increments.append((rnd, {k: v.float().contiguous() for k, v in factors.items()}))
        dense_bytes = sum(v.numel() * 4 for v in self.total.values())
        while self.increments and sum(tensors_bytes(f) for _, f in self.increments) > dense_bytes:
            self.dropped_through = self.increments.pop(0)[0]

    def took_part(self, device_ids: list[int], rnd: int) -> None:
        for d in device_ids:
            self.last_round[d] = rnd

    def for_device(self, device_id: int) -> BaseDelta:
        """What device ``device_id`` holds and what it is sent this round."""
        if not self.total:
            return BaseDelta()
        since = self.last_round.get(device_id, 0)
        if self.dropped_through and since <= self.dropped_through:  # it missed increments no longer kept
            return BaseDelta(new_dense={stem: v.float() for stem, v in self.total.items()})
        missed = [f for r, f in self.increments if r >= since]
        new = concat_factors(missed) if missed else {}
        if since == 0:  # it never took part: it holds nothing
            return BaseDelta(new=new)
        sent = factors_dense(new)
        held = {stem: (v - sent[stem]).float() if stem in sent else v.float() for stem, v in self.total.items()}
        return BaseDelta(held=held, new=new)

    def evaluation(self) -> BaseDelta:
        """The global model's change (held by the server; nothing is sent)."""
        return BaseDelta(held={stem: v.float() for stem, v in self.total.items()})
