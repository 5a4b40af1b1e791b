"""Local training options: the same for every device of a run, set in the run's configuration.

Torch-free, so a configuration can be read where torch is not installed (a forwarding Flower ClientApp).
:class:`~legendfl.config.RunConfig` holds one as ``train``; every option here is also a run option under its own
name (a TOML key, a ``legendfl run`` flag, a key of ``config.json``), and a runtime passes ``cfg.train`` to the
trainer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .options import option, validate


# the peak learning rate of the README's main job (configs/default.toml) and the paper's: one default for every
# entry point (``legendfl run``, ``flower local``, a strategy built in code)
DEFAULT_LR = 2e-3
# AdamW's moment decay rates (torch's defaults) for every client method; ``core.validation`` bounds an honest
# update's change with them
ADAMW_BETAS = (0.9, 0.999)


@dataclass
class TrainConfig:
    """Local training settings (the same for every device of a run)."""

    batch_size: int = option(16, "local batch size", minimum=1, integer=True)
    local_epochs: float = option(1.0, "local epochs per round", minimum=0.0, exclusive_minimum=True)
    max_local_steps: int | None = option(25, "cap on local steps per round (None: full local epochs)", minimum=1, integer=True)
    weight_decay: float = option(0.01, "AdamW weight decay", minimum=0.0)
    max_grad_norm: float | None = option(1.0, "gradient clipping by global norm (None: off)", minimum=0.0, exclusive_minimum=True)
    lora_scaling: float = option(2.0, "LoRA alpha / r, held equal on every layer and rank", minimum=0.0, exclusive_minimum=True)
    lora_dropout: float = option(0.0, "dropout on the LoRA input during local training", minimum=0.0, maximum=1.0)
    bf16: bool | str = option("auto", "bf16 autocast for local training (evaluation stays fp32); 'auto': where the "
                              "hardware computes bf16 natively (a CUDA GPU that supports it, a CPU with AVX512-BF16 or "
                              "AMX), since elsewhere it is emulated and several times slower than fp32",
                              choices=(True, False, "auto"))
    group_by_length: bool = option(True, "batch examples of similar length together (less padding, same examples)",
                                   choices=(True, False))
    seed: int = option(0, "seed of every random choice (partition, fleet, batches, dropout, init)", minimum=0, integer=True)

    def __post_init__(self) -> None:
        validate(self)

    def local_steps(self, partition_size: int) -> int:
        """Steps a device holding ``partition_size`` examples trains per round (``engine.trainer.local_batches``)."""
        steps = max(1, math.ceil(math.ceil(partition_size / self.batch_size) * self.local_epochs))
        return steps if self.max_local_steps is None else min(steps, self.max_local_steps)

    def max_examples(self, partition_size: int) -> int:
        """The most examples such a device can train on in a round (what its ``num_examples`` may say)."""
        return self.local_steps(partition_size) * self.batch_size
