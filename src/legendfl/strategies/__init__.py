"""Strategy registry: one file per algorithm; ``build_strategy`` makes one from a run configuration."""
from __future__ import annotations

from typing import Any

from .fedlora import FedLoRA

REGISTRY: dict[str, Any] = {"fedlora": FedLoRA}


def build_strategy(cfg) -> Any:
    common = dict(lr=cfg.lr, rounds=cfg.rounds, lr_schedule=cfg.lr_schedule, seed=cfg.seed)
    if cfg.strategy == "fedlora":
        return FedLoRA(rank=cfg.lora_rank, **common)
    if cfg.strategy.startswith("legend"):
        from .legend import build_legend

        return build_legend(cfg, **common)
    raise ValueError(f"strategy must be one of {sorted(REGISTRY)}, got {cfg.strategy!r}")
