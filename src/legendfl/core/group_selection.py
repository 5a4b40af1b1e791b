"""Which attention heads and FFN channels of each layer a device keeps, and the LoRA entries that go with them.

Structured pruning (``models/pruning.py``) removes whole groups: a head (its rows of query, key and value and
its columns of the attention output) or an FFN channel (its row of the intermediate projection and its column
of the block's output projection). The LoRA of a pruned module has the pruned shape: on the rows a group owns,
B loses those rows; on the columns, A loses those columns. :class:`GroupSelection` maps canonical LoRA keys
(``{layer}.{module}.lora_{A|B}``, ``core.strategy.lora_key``) to those entries: :meth:`~GroupSelection.restrict`
cuts full-size tensors down to what a device keeps (what it downloads and trains),
:meth:`~GroupSelection.expand` puts a device's tensors back at full size with a mask of the entries it held
(what the server averages element-wise). Module names are those of BERT-family encoders, the family whose
heads transformers prunes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

# module -> (group kind, the axis of the group in the module's weight: "rows" = outputs, "columns" = inputs)
GROUP_AXES = {"attention.self.query": ("heads", "rows"), "attention.self.key": ("heads", "rows"),
              "attention.self.value": ("heads", "rows"), "attention.output.dense": ("heads", "columns"),
              "intermediate.dense": ("channels", "rows"), "output.dense": ("channels", "columns")}


@dataclass(frozen=True)
class GroupSelection:
    """Kept heads (by unpruned index) and FFN channels per layer; a layer not named keeps all of its groups."""

    head_size: int = field(metadata={"help": "dimensions of one attention head"})
    keep_heads: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    keep_channels: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_size < 1:
            raise ValueError(f"head_size must be >= 1, got {self.head_size}")
        for name in ("keep_heads", "keep_channels"):
            for layer, kept in getattr(self, name).items():
                if not kept or min(kept) < 0 or list(kept) != sorted(set(kept)):
                    raise ValueError(f"{name} of layer {layer} must be a non-empty increasing list of indices >= 0, "
                                     f"got {list(kept)}")

    def _cut(self, key: str) -> tuple[int, torch.Tensor] | None:
        """(dimension of the tensor, kept indices along it) for a canonical LoRA key; None if it keeps all."""
        layer_text, _, rest = key.partition(".")
        module, _, part = rest.rpartition(".lora_")
        role = GROUP_AXES.get(module)
        if role is None or part not in ("A", "B"):
            return None
        kind, axis = role
        if (axis == "rows") != (part == "B"):  # rows are B's outputs, columns are A's inputs; the rank side is whole
            return None
        kept = (self.keep_heads if kind == "heads" else self.keep_channels).get(int(layer_text))
        if kept is None:
            return None
        if kind == "heads":
            index = torch.tensor([h * self.head_size + d for h in kept for d in range(self.head_size)])
        else:
            index = torch.tensor(list(kept))
        return (0 if part == "B" else 1), index

    def restrict(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in tensors.items():
            cut = self._cut(key)
            out[key] = value if cut is None else value.index_select(cut[0], cut[1]).clone()
        return out

    def expand(self, tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Full-size tensors (zero where the device held nothing) and their masks (1 where it did)."""
        full, masks = {}, {}
        for key, value in tensors.items():
            cut = self._cut(key)
            if cut is None:
                full[key], masks[key] = value, torch.ones_like(value)
                continue
            dim, index = cut
            shape = tuple(shapes[key])
            full[key] = torch.zeros(shape, dtype=value.dtype).index_copy(dim, index, value)
            masks[key] = torch.zeros(shape, dtype=value.dtype).index_fill(dim, index, 1)
        return full, masks
