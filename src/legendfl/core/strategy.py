"""The small strategy interface every algorithm implements, in the spirit of Flower's ``Strategy``.

A runtime (the in-process simulator or the Flower ServerApp) drives a strategy through three hooks:

1. :meth:`Strategy.configure_round` -> one :class:`DeviceTask` per device (its client method and layout,
   the tensors it receives, its learning rate and any typed local terms, ``core.hooks``);
2. the runtime's transport trains each device and hands back :class:`DeviceResult` objects (tensors it
   uploads, the work it did and how long each phase took: generic measurements, ``core.work``);
3. :meth:`Strategy.aggregate_round` folds the results into the global state.

A strategy declares its options as a dataclass (``Options``; help text per field, validated in
``__post_init__``) and registers itself by name (``strategies.registry``).

:meth:`Strategy.evaluation_task` tells the runtime what global model to evaluate, and
:meth:`Strategy.summary` what to put in the run's summary. Nothing here imports a runtime.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .hooks import LocalTerm
from .options import StrategyOptions
from .lora_layout import LoraLayout
from .task_config import TaskConfig
from .training import DEFAULT_LR
from .validation import UpdateCheck, UpdateLimit, check_update
from .work import DeviceTiming, DeviceWork

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


def lora_ranks(params: Tensors) -> dict[int, int]:
    """The LoRA rank of each layer that ``params`` (canonical keys) carry pairs for: an A tensor's first dimension."""
    suffix = lora_key(0, "", "A").rpartition(".")[2]  # "lora_A"
    return {key_layer(k): int(v.shape[0]) for k, v in sorted(params.items()) if k.rpartition(".")[2] == suffix
            and key_layer(k) is not None}


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
    decoder: bool = False  # a causal LM (generative tasks): no trained head, the LM head stays frozen
    # weights of a per-token output projection outside the blocks (a decoder's LM head: vocab x hidden; 0 for an
    # encoder, whose head works on one pooled vector per sequence and is in ``head``)
    output_projection: int = 0
    attention_heads: int = 0  # heads per attention layer (structured pruning's groups; 0: not known)
    # the backbone's pretrained weights ("full.<name>"), for strategies that exchange the whole model
    base_state: Tensors | None = field(default=None, repr=False, compare=False)

    @property
    def max_lora_rank(self) -> int | None:
        """The smaller side of the smallest LoRA module: a higher rank adds nothing a full-rank update lacks (None:
        no LoRA modules)."""
        return min((min(shape) for shape in self.linear_modules.values()), default=None)

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
    config: TaskConfig | None = None  # the client method's own configuration (core.task_config), e.g. a LoraLayout
    method: str = "lora"  # the client method that trains it (methods.base): "lora" | "adapter" | "full" | plugins
    lr: float = DEFAULT_LR
    local_terms: tuple[LocalTerm, ...] = ()  # typed additions to the local objective (e.g. HetLoRA's penalty)
    # a core.base_delta.BaseDelta: a change to the frozen weights the device applies first and does not send back
    # (FLoRA's merged stacks, FedEx-LoRA's residuals); its new part is downloaded
    base_delta: Any = None

    @property
    def download_bytes(self) -> int:
        return tensors_bytes(self.params) + (self.base_delta.download_bytes if self.base_delta is not None else 0)


@dataclass
class DeviceResult:
    """What a device sends back after local training."""

    device_id: int
    round: int
    params: Tensors  # uploaded tensors
    num_examples: int
    num_tokens: int = 0
    num_steps: int = 0
    train_loss: float = float("nan")
    wall_time_s: float = 0.0  # measured on the machine that ran the training
    measured_forward_s: float = 0.0
    measured_backward_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    # what the device did: the FLOPs and steps the trainer counted (``core.work.counted``), completed by the client
    # method with the bytes exchanged and the trained shape (``ClientMethod.work``)
    work: DeviceWork | None = None
    timing: DeviceTiming | None = None  # how long each phase took, as the device (and transport) measured it
    # a split round's participant (core.split): its work in each iteration, which the clock times one by one
    iterations: list[DeviceWork] = field(default_factory=list)

    @property
    def upload_bytes(self) -> int:
        return tensors_bytes(self.params)


@dataclass(frozen=True)
class NoOptions(StrategyOptions):
    """A strategy without options of its own."""


@dataclass
class Screening:
    """What :meth:`Strategy.screen` found: the results to aggregate, why the others were refused (device ->
    reason), and every checked update's verdict with its measured change (device -> ``UpdateCheck``)."""

    accepted: list[DeviceResult] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    checks: dict[int, UpdateCheck] = field(default_factory=dict)


class Strategy(ABC):
    """Base class of all federated algorithms. Subclasses implement the three hooks.

    ``Options``: the strategy's own options (a dataclass with help text that validates itself); ``options``
    is an instance of it. The common settings (learning rate and its schedule, rounds, seed, the run's LoRA
    rank) come as keywords.
    """

    name: str = "strategy"
    Options: ClassVar[type] = NoOptions
    # the attributes that change while a run goes on (a checkpoint saves them; see ``state_dict``); each
    # class lists its own, the base classes' are added
    STATE: ClassVar[tuple[str, ...]] = ()
    # whether configure_round reads the devices' reported timings: a run of such a strategy must be re-run,
    # not only re-timed, to see it under another cost model or fleet (``legendfl retime``, ``retiming.py``)
    decisions_use_time: bool = False

    def __init__(self, options: Any = None, *, lr: float = DEFAULT_LR, rounds: int = 10, lr_schedule: str = "cosine",
                 seed: int = 0, lora_rank: int = 8, max_update_norm: float | None = None) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be one of ('cosine', 'constant'), got {lr_schedule!r}")
        if options is None:
            options = self.Options()
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, got {type(options).__name__}")
        self.options = options
        self.base_lr = lr
        self.rounds = rounds
        self.lr_schedule = lr_schedule
        self.seed = seed
        self.lora_rank = lora_rank
        self.max_update_norm = max_update_norm
        self.spec: ModelSpec | None = None
        self.device_ids: list[int] = []

    def initialize(self, spec: ModelSpec, device_ids: list[int]) -> None:
        """Called once before round 1 with the model's shapes and the fleet's device ids."""
        self.spec = spec
        self.device_ids = list(device_ids)

    # --- state, for checkpoints --------------------------------------------------------------------------------
    @classmethod
    def state_attributes(cls) -> tuple[str, ...]:
        """Every attribute a run changes after ``initialize``, over the class and its bases."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in vars(klass).get("STATE", ()):
                if name not in names:
                    names.append(name)
        return tuple(names)

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state after a round (global tensors, estimates, search state, ...): what a resumed run
        needs, besides the configuration, to continue exactly. A test runs every registered strategy and fails
        if a round changes an attribute that ``STATE`` does not list."""
        import copy

        return {name: copy.deepcopy(getattr(self, name)) for name in self.state_attributes()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after ``initialize`` with the same configuration)."""
        missing = set(self.state_attributes()) - set(state)
        if missing:
            raise ValueError(f"checkpoint of strategy {self.name!r} lacks {sorted(missing)}")
        for name in self.state_attributes():
            setattr(self, name, state[name])

    def round_lr(self, rnd: int) -> float:
        """Learning rate of round ``rnd`` (1-based): cosine decay over rounds, as in the paper."""
        if self.lr_schedule == "constant" or self.rounds <= 1:
            return self.base_lr
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * (rnd - 1) / self.rounds))

    @abstractmethod
    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        """One task per participating device."""

    def screen(self, tasks: dict[int, DeviceTask], results: list[DeviceResult],
               limits: dict[int, UpdateLimit] | None = None) -> Screening:
        """Results fit to aggregate, why the others were rejected, and each checked update's change and bound
        (``core.validation``; ``limits``: what each device can have done, from the runtime). A rejected device is
        then treated as one that did not answer. Override to add a strategy's own checks."""
        screening = Screening()
        limits = limits or {}
        for r in results:
            task = tasks.get(r.device_id)
            check = (UpdateCheck("no task was sent to this device") if task is None else
                     check_update(task, r, self.max_update_norm, limits.get(r.device_id)))
            screening.checks[r.device_id] = check
            if check.problem is None:
                screening.accepted.append(r)
            else:
                screening.rejected[r.device_id] = check.problem
        return screening

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
        """Per-device configuration of this round for the records (what each task's config describes: a LoRA
        layout its depth and ranks)."""
        return {str(dev): task.config.describe() for dev, task in tasks.items() if task.config is not None}
