"""What a runtime does with a task: train it or evaluate it, by the task's kind.

Runtimes (in-process, Flower) call these; strategies never do. New kinds of method (adapters, full
fine-tuning) register a trainer and an evaluator here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.strategy import DeviceResult, DeviceTask, key_layer, tensors_bytes
from ..fleet.cost_model import DeviceWork
from ..models.backbone import Backbone
from ..models.trainer import TokenizedData, TrainConfig, evaluate_lora, train_lora


@dataclass
class DeviceData:
    backbone: Backbone
    train: TokenizedData
    cfg: TrainConfig


Trainer = Callable[[DeviceTask, DeviceData, list[int]], DeviceResult]
Evaluator = Callable[[DeviceTask, Backbone, TokenizedData, TrainConfig], dict]

_TRAINERS: dict[str, Trainer] = {}
_EVALUATORS: dict[str, Evaluator] = {}


def register(kind: str, trainer: Trainer, evaluator: Evaluator) -> None:
    _TRAINERS[kind] = trainer
    _EVALUATORS[kind] = evaluator


def _lora_trainer(task: DeviceTask, data: DeviceData, indices: list[int]) -> DeviceResult:
    reg_cfg = task.settings.get("rank_regularizer")
    if reg_cfg is None:
        return train_lora(data.backbone, task, data.train, indices, data.cfg)
    from ..models.regularizers import make_rank_regularizer

    return train_lora(data.backbone, task, data.train, indices, data.cfg,
                      regularizer=make_rank_regularizer(reg_cfg["gamma"], reg_cfg["strength"]),
                      tail_gamma=reg_cfg["gamma"])


def _lora_evaluator(task: DeviceTask, backbone: Backbone, dev: TokenizedData, cfg: TrainConfig) -> dict:
    return evaluate_lora(backbone, task, dev, scaling=cfg.lora_scaling)


register("lora", _lora_trainer, _lora_evaluator)


def _full_trainer(task: DeviceTask, data: DeviceData, indices: list[int]) -> DeviceResult:
    from ..models.full_model import train_full

    return train_full(data.backbone, task, data.train, indices, data.cfg)


def _full_evaluator(task: DeviceTask, backbone: Backbone, dev: TokenizedData, cfg: TrainConfig) -> dict:
    from ..models.full_model import evaluate_full

    return evaluate_full(backbone, task, dev)


register("full", _full_trainer, _full_evaluator)


def _adapter_trainer(task: DeviceTask, data: DeviceData, indices: list[int]) -> DeviceResult:
    from ..models.bottleneck import train_adapter

    return train_adapter(data.backbone, task, data.train, indices, data.cfg)


def _adapter_evaluator(task: DeviceTask, backbone: Backbone, dev: TokenizedData, cfg: TrainConfig) -> dict:
    from ..models.bottleneck import evaluate_adapter

    return evaluate_adapter(backbone, task, dev)


register("adapter", _adapter_trainer, _adapter_evaluator)


def train(task: DeviceTask, data: DeviceData, indices: list[int]) -> DeviceResult:
    if task.kind not in _TRAINERS:
        raise ValueError(f"task kind must be one of {sorted(_TRAINERS)}, got {task.kind!r}")
    return _TRAINERS[task.kind](task, data, indices)


def evaluate(task: DeviceTask, backbone: Backbone, dev: TokenizedData, cfg: TrainConfig) -> dict:
    return _EVALUATORS[task.kind](task, backbone, dev, cfg)


def work_of(task: DeviceTask, result: DeviceResult, num_layers: int) -> DeviceWork:
    """The work the cost model prices: FLOPs done, the parts a latency profile prices, bytes really exchanged."""
    lora_up = {k: v for k, v in result.params.items() if key_layer(k) is not None}
    full = task.kind == "full"
    if task.layout is not None:
        depth, layers = task.layout.depth, len(task.layout.ranks)
    else:
        depth = int(result.metrics.get("trained_depth", 0))
        layers = depth
    rank_sum = int(result.metrics.get("uploaded_rank_sum", task.layout.rank_sum if task.layout else 0))
    return DeviceWork(result.forward_flops, result.backward_flops, task.download_bytes, result.upload_bytes,
                      depth, rank_sum, tensors_bytes(lora_up), result.num_steps, result.layer_forward_flops,
                      result.trainable_forward_flops, layers, num_layers, full)
