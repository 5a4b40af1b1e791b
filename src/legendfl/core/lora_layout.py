"""Which transformer layers carry LoRA, and with which rank.

A :class:`LoraLayout` is a map ``layer index -> rank``. LEGEND uses the last ``k`` layers (contiguous
from the output) with ranks rising towards the output; the paper's pre-tests use any set of layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

from .task_config import TaskConfig, register_task_config


@register_task_config
@dataclass(frozen=True)
class LoraLayout(TaskConfig):
    """LoRA placement: ``ranks[l]`` is the rank of every LoRA pair in transformer layer ``l`` (the task config
    of client method "lora")."""

    kind: ClassVar[str] = "lora"

    ranks: Mapping[int, int] = field(metadata={"help": "layer index (0 = closest to the input) -> LoRA rank"})
    num_layers: int = field(metadata={"help": "number of transformer layers L of the model"})

    def __post_init__(self) -> None:
        if not isinstance(self.num_layers, int) or self.num_layers <= 0:
            raise ValueError(f"num_layers must be a positive integer, got {self.num_layers!r}")
        if not self.ranks:
            raise ValueError("ranks must name at least one layer")
        clean: dict[int, int] = {}
        for layer, rank in self.ranks.items():
            if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
                raise ValueError(f"layer index must be in [0, {self.num_layers - 1}], got {layer!r}")
            if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
                raise ValueError(f"rank must be a positive integer, got {rank!r} for layer {layer}")
            clean[layer] = rank
        object.__setattr__(self, "ranks", dict(sorted(clean.items())))

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def uniform(cls, layers: Iterable[int], rank: int, num_layers: int) -> "LoraLayout":
        return cls({int(l): rank for l in layers}, num_layers)

    @classmethod
    def all_layers(cls, rank: int, num_layers: int) -> "LoraLayout":
        return cls.uniform(range(num_layers), rank, num_layers)

    @classmethod
    def top(cls, depth: int, rank_distribution: list[int]) -> "LoraLayout":
        """The last ``depth`` layers, with ranks taken from a global per-layer ``rank_distribution``."""
        num_layers = len(rank_distribution)
        if not 1 <= depth <= num_layers:
            raise ValueError(f"lora_depth must be in [1, {num_layers}], got {depth}")
        return cls({l: int(rank_distribution[l]) for l in range(num_layers - depth, num_layers)}, num_layers)

    # --- views --------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.ranks)

    @property
    def depth(self) -> int:
        """Number of layers from the shallowest LoRA layer up to the output (the backward length)."""
        return self.num_layers - min(self.ranks)

    @property
    def shallowest(self) -> int:
        return min(self.ranks)

    @property
    def rank_sum(self) -> int:
        return sum(self.ranks.values())

    def fields_json(self) -> dict[str, Any]:
        return {"num_layers": self.num_layers, "ranks": {str(k): v for k, v in self.ranks.items()}}

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "LoraLayout":
        return cls({int(k): int(v) for k, v in data["ranks"].items()}, int(data["num_layers"]))

    def describe(self) -> dict[str, Any]:
        return {"depth": self.depth, "ranks": list(self.ranks.values())}

    def __str__(self) -> str:
        return "{" + ", ".join(f"{l}:{r}" for l, r in self.ranks.items()) + "}"
