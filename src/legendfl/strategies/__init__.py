"""Strategy registry: one file per algorithm; ``build_strategy`` makes one from a run configuration."""
from __future__ import annotations

from typing import Any

from .fedadapter import FedAdapter
from .fedlora import FedLoRA
from .full_finetune import FullFineTuning
from .hetlora import HetLoRA
from .legend import Legend, build_legend

REGISTRY: dict[str, Any] = {"fedlora": FedLoRA, "hetlora": HetLoRA, "fedadapter": FedAdapter, "full": FullFineTuning,
                            "legend": Legend, "legend-no-depth": Legend, "legend-no-rank": Legend}


def build_strategy(cfg) -> Any:
    common = dict(lr=cfg.lr, rounds=cfg.rounds, lr_schedule=cfg.lr_schedule, seed=cfg.seed)
    if cfg.strategy == "fedlora":
        return FedLoRA(rank=cfg.lora_rank, pretest=cfg.pretest, rank_budget=cfg.rank_budget, **common)
    if cfg.strategy == "hetlora":
        return HetLoRA(r_min=cfg.hetlora_r_min, r_max=cfg.hetlora_r_max, gamma=cfg.hetlora_gamma,
                       reg_strength=cfg.hetlora_lambda, ema=cfg.ema, **common)
    if cfg.strategy == "fedadapter":
        return FedAdapter(depth=cfg.fedadapter_depth, width=cfg.fedadapter_width, window_rounds=cfg.fedadapter_window, **common)
    if cfg.strategy == "full":
        return FullFineTuning(**common)
    if cfg.strategy.startswith("legend"):
        return build_legend(cfg, **common)
    raise ValueError(f"strategy must be one of {sorted(REGISTRY)}, got {cfg.strategy!r}")
