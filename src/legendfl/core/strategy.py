"""The small strategy interface every algorithm implements, in the spirit of Flower's ``Strategy``.

A runtime (the in-process simulator or the Flower ServerApp) drives a strategy through three hooks:

1. :meth:`Strategy.configure_round` -> one :class:`DeviceTask` per device (its layout, the tensors it
   receives, its learning rate and any algorithm-specific settings);
2. the runtime trains each device and hands back :class:`DeviceResult` objects (tensors it uploads, the
   work it did and, for LEGEND, its capacity report);
3. :meth:`Strategy.aggregate_round` folds the results into the global state.

:meth:`Strategy.evaluation_task` tells the runtime what global model to evaluate, and
:meth:`Strategy.summary` what to put in the run's summary. Nothing here imports a runtime.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .lora_layout import LoraLayout

if TYPE_CHECKING:  # torch is imported where tensors are made, so a forwarding ClientApp never loads it
    import torch

Tensors = dict[str, "torch.Tensor"]


def lora_key(layer: int, module: str, part: str) -> str:
    """Canonical name of a LoRA tensor: ``"{layer}.{module}.lora_{A|B}"``, e.g. ``3.attention.self.query.lora_A``."""
    return f"{layer}.{module}.lora_{part}"


def key_layer(key: str) -> int | None:
    """Transformer layer of a canonical LoRA key; ``None`` for head or other keys."""
    head, _, _ = key.partition(".")
    return int(head) if head.isdigit() else None


def tensors_bytes(tensors: Tensors) -> int:
    """Bytes on the wire of a set of tensors (their numeric payload, in their own dtype)."""
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


@dataclass(frozen=True)
class ModelSpec:
    """What a strategy may know about the model: shapes, never modules."""

    num_layers: int
    linear_modules: dict[str, tuple[int, int]]  # in-block module name -> (in_features, out_features)
    head: Tensors  # initial head tensors ("head.<name>"), trained by every device
    hidden_size: int
    base_param_count: int  # all frozen backbone parameters (for full fine-tuning traffic)
    bytes_per_param: int = 4
    # the backbone's pretrained weights ("full.<name>"), for strategies that exchange the whole model
    base_state: Tensors | None = field(default=None, repr=False, compare=False)

    def lora_shapes(self, layout: LoraLayout) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for layer, rank in layout.ranks.items():
            for module, (fan_in, fan_out) in self.linear_modules.items():
                shapes[lora_key(layer, module, "A")] = (rank, fan_in)
                shapes[lora_key(layer, module, "B")] = (fan_out, rank)
        return shapes

    def lora_param_count(self, layout: LoraLayout) -> int:
        return sum(math.prod(s) for s in self.lora_shapes(layout).values())

    def init_lora(self, layout: LoraLayout, seed: int) -> Tensors:
        """Fresh LoRA tensors as peft initialises them: A ~ Kaiming-uniform(a=sqrt(5)), B = 0."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        out: Tensors = {}
        for key, shape in self.lora_shapes(layout).items():
            if key.endswith("lora_A"):
                bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on (rank, fan_in)
                out[key] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            else:
                out[key] = torch.zeros(shape)
        return out


@dataclass
class DeviceTask:
    """What the server sends one device for one round."""

    device_id: int
    round: int
    params: Tensors  # what the device downloads (LoRA tensors of its layers, head, ...)
    layout: LoraLayout | None = None  # LoRA placement; None for non-LoRA methods
    kind: str = "lora"  # "lora" | "full" | "adapter"
    lr: float = 5e-4
    settings: dict[str, Any] = field(default_factory=dict)  # algorithm-specific (e.g. HetLoRA's regulariser)

    @property
    def download_bytes(self) -> int:
        return tensors_bytes(self.params)


@dataclass
class CapacityReport:
    """What a device reports about its own speed (paper section 4.3), in seconds."""

    backward_time_per_layer: float  # mu-hat: backprop time of one LoRA layer over the round
    upload_time_per_rank: float  # beta-hat: upload time of one layer's LoRA at unit rank
    forward_time: float  # t-hat: forward propagation time over the round


@dataclass
class DeviceResult:
    """What a device sends back after local training."""

    device_id: int
    round: int
    params: Tensors  # uploaded tensors
    num_examples: int
    num_tokens: int = 0
    num_steps: int = 0
    forward_flops: float = 0.0
    backward_flops: float = 0.0
    layer_forward_flops: float = 0.0  # one frozen layer's forward FLOPs summed over the round's batches
    trainable_forward_flops: float = 0.0  # forward FLOPs of the trained modules (LoRA, adapters) over the round
    train_loss: float = float("nan")
    wall_time_s: float = 0.0  # measured on the machine that ran the training
    measured_forward_s: float = 0.0
    measured_backward_s: float = 0.0
    report: CapacityReport | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def upload_bytes(self) -> int:
        return tensors_bytes(self.params)


class Strategy(ABC):
    """Base class of all federated algorithms. Subclasses implement the three hooks."""

    name: str = "strategy"
    # whether configure_round reads the devices' reported timings: a run of such a strategy must be re-run,
    # not only re-timed, to see it under another cost model or fleet (``fleet.retime``)
    decisions_use_time: bool = False

    def __init__(self, *, lr: float = 5e-4, rounds: int = 10, lr_schedule: str = "cosine", seed: int = 0) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be one of ('cosine', 'constant'), got {lr_schedule!r}")
        self.base_lr = lr
        self.rounds = rounds
        self.lr_schedule = lr_schedule
        self.seed = seed
        self.spec: ModelSpec | None = None
        self.device_ids: list[int] = []

    def initialize(self, spec: ModelSpec, device_ids: list[int]) -> None:
        """Called once before round 1 with the model's shapes and the fleet's device ids."""
        self.spec = spec
        self.device_ids = list(device_ids)

    def round_lr(self, rnd: int) -> float:
        """Learning rate of round ``rnd`` (1-based): cosine decay over rounds, as in the paper."""
        if self.lr_schedule == "constant" or self.rounds <= 1:
            return self.base_lr
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * (rnd - 1) / self.rounds))

    @abstractmethod
    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        """One task per participating device."""

    @abstractmethod
    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        """Fold results into the global state; return metrics for the round record."""

    @abstractmethod
    def evaluation_task(self) -> DeviceTask:
        """The global model to evaluate (device_id -1)."""

    def candidate_evaluations(self, rnd: int) -> dict[str, DeviceTask]:
        """Extra server-side evaluations wanted after round ``rnd`` (e.g. FedAdapter's trial groups)."""
        return {}

    def receive_evaluations(self, rnd: int, metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
        """Results of :meth:`candidate_evaluations`; returns metrics for the round record."""
        return {}

    def summary(self) -> dict[str, Any]:
        return {"strategy": self.name}

    def round_log(self, tasks: dict[int, DeviceTask]) -> dict[str, Any]:
        """Per-device configuration of this round for the records (depth and ranks)."""
        log = {}
        for dev, task in tasks.items():
            if task.layout is not None:
                log[str(dev)] = {"depth": task.layout.depth, "ranks": list(task.layout.ranks.values())}
        return log
