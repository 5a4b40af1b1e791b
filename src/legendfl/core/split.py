"""Split rounds: the protocol of split federated learning (MergeSFL), in which the server trains in every iteration.

In a split round each selected device holds the model's bottom (embeddings and blocks ``0 .. s-1``, with LoRA)
and the server its top (blocks ``s .. L-1`` and the head, with LoRA). One round is K iterations; in each, every
device runs its bottom forward on its own batch and sends the features (with the labels and sequence lengths),
the server merges all of them into one batch, runs one forward and backward of the top and one optimizer step,
and returns each device the gradient of its features; each device then backpropagates and steps. After K
iterations the devices upload their bottom LoRA.

How a strategy asks for one, and what comes back (no runtime import; ``runtime/`` and ``engine/`` implement it):

- K is the most local steps any selected device would train in a round of the run's settings at its own batch
  size (``TrainConfig.local_steps``): the step budget every other strategy's devices get;
- ``configure_round`` returns the devices' tasks plus one task under :data:`SERVER_ID`: the server's share
  (its top LoRA, head and optimizer state), all with a :class:`SplitPlan` config and a client method whose
  ``joint`` flag is set (``methods/split_lora.py``). The runtime trains them together (in the simulator only:
  Flower's messages carry one task to one node, and a split round needs a message per iteration);
- every device result carries its per-iteration work (:attr:`DeviceResult.iterations`: the bottom's FLOPs,
  the features it sent and the gradients it received), and the server's result, under :data:`SERVER_ID`, its
  own per-iteration work; the clock (``fleet/split_clock.py``) times the round from both;
- ``aggregate_round`` receives the device results that passed screening and then the server's result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .task_config import TaskConfig, register_task_config
from .validation import UpdateLimit

SERVER_ID = -1  # the device id of a split round's server task and result
FEATURE_BYTES = 4  # features and their gradients cross the network in fp32
LABEL_BYTES = 8 + 4  # per example: its label (int64) and its sequence length (int32; the server rebuilds the mask)
OPTIMIZER = "optimizer."  # key prefix of the server's AdamW state among its task's and result's tensors


@register_task_config
@dataclass(frozen=True)
class SplitPlan(TaskConfig):
    """One participant's part of a split round (the task config of client method "split-lora")."""

    kind: ClassVar[str] = "split"

    split_layer: int  # s: devices hold blocks 0 .. s-1, the server s .. L-1 and the head
    num_layers: int  # L
    rank: int  # LoRA rank on every block, bottom and top
    batch_size: int  # examples per iteration of this device (the server: of the merged batch)
    role: str = "device"  # "device" or "server"

    def __post_init__(self) -> None:
        for name in ("num_layers", "rank", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.split_layer, bool) or not isinstance(self.split_layer, int) \
                or not 1 <= self.split_layer <= self.num_layers - 1:
            raise ValueError(f"split_layer must be an integer in [1, {self.num_layers - 1}] (a model of "
                             f"{self.num_layers} blocks), got {self.split_layer!r}")
        if self.role not in ("device", "server"):
            raise ValueError(f"role must be one of ['device', 'server'], got {self.role!r}")

    @property
    def depth(self) -> int:
        """Blocks this participant trains (and backpropagates through)."""
        return self.split_layer if self.role == "device" else self.num_layers - self.split_layer

    def describe(self) -> dict[str, Any]:
        return {"split_layer": self.split_layer, "batch_size": self.batch_size, "depth": self.depth}


def activation_bytes(sequences: int, padded_width: int, hidden_size: int) -> tuple[int, int]:
    """(uplink, downlink) bytes of one device's iteration: its features, labels and lengths up, the features'
    gradient down (both ``sequences x padded_width x hidden`` in fp32)."""
    features = sequences * padded_width * hidden_size * FEATURE_BYTES
    return features + sequences * LABEL_BYTES, features


def split_update_limit(limit: UpdateLimit, iterations: int, batch_size: int) -> UpdateLimit:
    """What a device can have done in a split round: the server's ``iterations`` at its own batch size (a device
    with few examples starts another epoch), in place of the run's local steps."""
    return UpdateLimit(limit.partition_size, iterations, iterations * batch_size, limit.weight_decay)
