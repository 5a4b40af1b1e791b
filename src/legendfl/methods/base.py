"""Client-side methods as plugins: how a device trains, uploads, counts and evaluates one kind of task.

A :class:`ClientMethod` implements four parts:

- ``inject(backbone, task, cfg, train)``: a context in which the shared frozen backbone carries the task's
  trainable modules loaded with the task's tensors (and nothing of them afterwards);
- ``collect(backbone, model, task)``: the tensors the device uploads, under canonical keys (``models.keys``);
- ``flops(backbone, task)``: FLOPs of a batch (``core.flops``) and ``shape(task, result, num_layers)``: the
  trained depth, trained layers and rank sum the cost model prices;
- ``evaluate`` and, where the method has a standard format, ``export`` (LoRA: a peft adapter).

The base class turns these into local training (``engine.trainer.local_training``) with the task's typed local
terms (``engine.local_terms``) and fills the result's uploaded tensors and work. A built-in method is one
module of this package named after the method (``lora``, ``adapter``, ``full``), which calls
:func:`register_method` at its end and is imported the first time a task names it; a plugin calls
:func:`register_method` itself. A task names its method in ``DeviceTask.method``.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import ClassVar

import torch

from ..core.plugins import load_plugins
from ..core.strategy import DeviceResult, DeviceTask, Tensors, key_layer, tensors_bytes
from ..core.training import TrainConfig
from ..core.work import DeviceWork
from ..engine.local_terms import implement
from ..engine.trainer import FlopsFn, evaluate_model, local_training
from ..models.backbone import Backbone
from ..models.generative import GenerativeSplit, evaluate_split
from ..models.tokenized import TokenizedData


class ClientMethod(ABC):
    """One kind of local training on the shared backbone (see the module doc)."""

    name: ClassVar[str] = ""
    full: ClassVar[bool] = False  # every weight trained (the cost model adds weight gradients)
    batched: ClassVar[bool] = False  # its tasks may train in the batched engine (a LoRA layout on the shared backbone)
    config_kind: ClassVar[str | None] = None  # the kind of TaskConfig its tasks carry (DeviceTask.config); None: none
    export_name: ClassVar[str] = "adapter"  # the folder of a run's output that :meth:`export` writes
    # its tasks train together with a server task, iteration by iteration (a split round, ``core.split``):
    # the runtime calls :meth:`train_joint` instead of :meth:`train`
    joint: ClassVar[bool] = False

    def task_config(self, task: DeviceTask):
        """The task's own configuration (``DeviceTask.config``), refused by name unless it is this method's kind."""
        if self.config_kind is not None and getattr(task.config, "kind", None) != self.config_kind:
            got = getattr(task.config, "kind", None) if task.config is not None else "none"
            raise ValueError(f"a {self.name!r} task needs a task config of kind {self.config_kind!r}, got {got!r}")
        return task.config

    @abstractmethod
    def inject(self, backbone: Backbone, task: DeviceTask, cfg: TrainConfig, train: bool) -> AbstractContextManager[torch.nn.Module]:
        """Context: the backbone with the task's modules and tensors (trainable if ``train``)."""

    @abstractmethod
    def collect(self, backbone: Backbone, model: torch.nn.Module, task: DeviceTask) -> Tensors:
        """The tensors the device uploads, as CPU copies under canonical keys."""

    @abstractmethod
    def flops(self, backbone: Backbone, task: DeviceTask) -> FlopsFn:
        """FLOPs of one batch of (sequences, padded width) for this task."""

    @abstractmethod
    def shape(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> tuple[int, int, int]:
        """(trained depth, trained layers, uploaded rank sum) of the task, for the cost model."""

    def train(self, task: DeviceTask, backbone: Backbone, data: TokenizedData, indices: list[int],
              cfg: TrainConfig) -> DeviceResult:
        terms = [implement(term, self.name) for term in task.local_terms]
        with self.inject(backbone, task, cfg, train=True) as model:
            start_metrics: dict = {}
            for term in terms:
                term.start(model, start_metrics)
            penalties = [term.penalty for term in terms]
            result = local_training(model, task, data, indices, cfg, self.flops(backbone, task), penalties)
            for term in terms:
                term.finish(model, result.metrics)
            result.metrics.update(start_metrics)
            result.params = self.collect(backbone, model, task)
        result.work = self.work(task, result, backbone.num_layers)
        return result

    def train_joint(self, server: DeviceTask, tasks: list[DeviceTask], backbone: Backbone, data: TokenizedData,
                    partitions: dict[int, list[int]], cfg: TrainConfig) -> dict[int, DeviceResult]:
        """A split round: ``tasks`` trained together with the server's task (results by device id, the server's
        under ``core.split.SERVER_ID``). Only methods with ``joint`` set implement it."""
        raise ValueError(f"client method {self.name!r} trains one device at a time; a split round needs a joint method")

    def evaluate(self, task: DeviceTask, backbone: Backbone, data, cfg: TrainConfig) -> dict[str, float]:
        """Accuracy and loss: classification on ``TokenizedData``, a generative task on a ``GenerativeSplit``."""
        with self.inject(backbone, task, cfg, train=False) as model:
            if isinstance(data, GenerativeSplit):
                return evaluate_split(model, backbone.tokenizer, data)
            return evaluate_model(model, data)

    def export(self, task: DeviceTask, backbone: Backbone, out_dir: str, cfg: TrainConfig) -> bool:
        """Save the model of ``task`` in the method's standard format; False if it has none."""
        return False

    def work(self, task: DeviceTask, result: DeviceResult, num_layers: int) -> DeviceWork:
        """The work the cost model prices: FLOPs done, the parts a latency profile prices, bytes really exchanged."""
        depth, layers, rank_sum = self.shape(task, result, num_layers)
        def per_layer(params: Tensors) -> int:  # bytes of the LoRA or adapter tensors (not the head)
            return tensors_bytes({k: v for k, v in params.items() if key_layer(k) is not None})

        if result.work is None:
            raise ValueError(f"device {result.device_id}: no counted work to complete (the trainer sets it)")
        return dataclasses.replace(
            result.work, download_bytes=task.download_bytes, upload_bytes=result.upload_bytes,
            trained_depth=depth, rank_sum=rank_sum, trained_layers=layers, num_layers=num_layers, full=self.full,
            lora_upload_bytes=per_layer(result.params), lora_download_bytes=per_layer(task.params))


_METHODS: dict[str, ClientMethod] = {}


def register_method(method: ClientMethod) -> ClientMethod:
    """Make ``method`` the implementation of tasks whose ``method`` is ``method.name``."""
    if not method.name:
        raise ValueError("a client method needs a name")
    _METHODS[method.name] = method
    return method


def builtin_methods() -> list[str]:
    """The client methods that ship in this package: one module each, named after the method (``methods/lora.py``
    is "lora", ``methods/pruned_lora.py`` "pruned-lora"), imported on first use so that a run loads only the
    libraries of the methods it uses."""
    package = importlib.import_module(__package__)
    return sorted(info.name.replace("_", "-") for info in pkgutil.iter_modules(package.__path__) if info.name != "base")


def get_method(name: str) -> ClientMethod:
    if name not in _METHODS and name in builtin_methods():
        importlib.import_module(f"{__package__}.{name.replace('-', '_')}")  # the module registers its method
    if name not in _METHODS:
        load_plugins()  # a plugin's client method (core/plugins.py)
    if name not in _METHODS:
        raise ValueError(f"task method must be one of {sorted(set(builtin_methods()) | set(_METHODS))}, got {name!r}")
    return _METHODS[name]
