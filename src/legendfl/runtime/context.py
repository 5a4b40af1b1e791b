"""One run context, built from the configuration, for every runtime and role.

The simulator needs the whole federation (every device's tokenised partition, the fleet), the Flower
ServerApp the evaluation splits, a Flower ClientApp its own device's data. All three load the task, the
model and the training options the same way here, so a device's examples, their order and the model
they train are the same whichever runtime runs them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from ..config import RunConfig
from ..core.split import SERVER_ID
from ..core.strategy import DeviceResult, DeviceTask
from ..core.training import TrainConfig
from ..data.partition import partition_stats
from ..data.run_data import is_generative, load_run_task, run_partitions, server_validation
from ..data.tasks import TaskData
from ..engine.batched_training import batched_applies, train_batched
from ..methods.base import get_method
from ..models.backbone import Backbone, load_backbone, peek_num_layers
from ..models.generative import CausalLMData, GenerativeSplit
from ..models.tokenized import TokenizedData

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    cfg: RunConfig
    backbone: Backbone
    train_cfg: TrainConfig
    label_names: list[str]
    dev: TokenizedData | None = None  # the reported dev split (server)
    validation: TokenizedData | None = None  # the server's held-out split for choosing between candidates
    train: TokenizedData | CausalLMData | None = None  # examples some device holds (simulator) or this device's (client)
    partitions: list[list[int]] = field(default_factory=list)  # per device: indices into ``train``
    partition_stats: list[dict] = field(default_factory=list)
    task: TaskData | None = None

    # --- construction ---------------------------------------------------------------------------------------
    @staticmethod
    def _model(cfg: RunConfig, num_labels: int) -> Backbone:
        layers = peek_num_layers(cfg.model)
        if layers is not None:  # options that cannot fit the model are refused before its weights load
            cfg.strategy_options_resolved().check_num_layers(layers)
        if is_generative(cfg):  # a decoder; its LM head stays frozen
            return load_backbone(cfg.model, num_labels, cfg.train.seed, cfg.device, task_type="causal_lm")
        return load_backbone(cfg.model, num_labels, cfg.train.seed, cfg.device)

    def _training_data(self, examples: list):
        """Tokenised training examples: classification pairs, or prompt/answer pairs with answer-only labels."""
        if is_generative(self.cfg):
            return CausalLMData(self.backbone.tokenizer, [(p, a) for p, a, _ in examples], self.cfg.max_length,
                                [y for _, _, y in examples])
        return TokenizedData(self.backbone.tokenizer, examples, self.cfg.max_length)

    def _evaluation_data(self, examples: list, scoring: str | None):
        if scoring is not None:  # a prompted task's answers: " " + each label's word (data/generative_tasks.py)
            answers = tuple(f" {name}" for name in self.label_names) if scoring == "choice" else ()
            return GenerativeSplit(self.backbone.tokenizer, examples, scoring, self.cfg.max_length, self.cfg.max_new_tokens,
                                   answers)
        return TokenizedData(self.backbone.tokenizer, examples, self.cfg.max_length)

    @classmethod
    def for_server(cls, cfg: RunConfig) -> "RunContext":
        """Model, dev split and validation split (the Flower ServerApp)."""
        task = load_run_task(cfg)
        backbone = cls._model(cfg, task.num_labels)
        ctx = cls(cfg, backbone, cfg.train, task.label_names, task=task)
        ctx._evaluation_splits(task)
        return ctx

    @classmethod
    def for_simulation(cls, cfg: RunConfig) -> "RunContext":
        """The server's splits plus every device's tokenised partition (the in-process simulator)."""
        task = load_run_task(cfg)
        parts = run_partitions(cfg, task)
        backbone = cls._model(cfg, task.num_labels)
        t0 = time.perf_counter()
        used = sorted({i for p in parts for i in p})
        if len(used) < len(task.train):  # tokenise only the examples some device holds
            position = {i: n for n, i in enumerate(used)}
            examples = [task.train[i] for i in used]
            parts = [[position[i] for i in p] for p in parts]
        else:
            examples = task.train
        ctx = cls(cfg, backbone, cfg.train, task.label_names, task=task, partitions=parts,
                  partition_stats=partition_stats(parts, [ex[2] for ex in examples], task.num_labels))
        ctx.train = ctx._training_data(examples)
        ctx._evaluation_splits(task)
        log.info("task %s: %d train / %d dev examples, labels %s; tokenised in %.1fs", task.name, len(task.train),
                 len(task.dev), task.label_names, time.perf_counter() - t0)
        log.info("model %s: %d layers, LoRA targets %s, head %s", cfg.model, backbone.num_layers,
                 sorted(backbone.linear_modules), backbone.head_names)
        return ctx

    @classmethod
    def for_client(cls, cfg: RunConfig, examples: list, label_names: list[str]) -> "RunContext":
        """One device: the model and its own tokenised examples (a Flower ClientApp or worker)."""
        backbone = cls._model(cfg, len(label_names))
        ctx = cls(cfg, backbone, cfg.train, list(label_names), partitions=[list(range(len(examples)))])
        ctx.train = ctx._training_data(examples)
        return ctx

    def _evaluation_splits(self, task: TaskData) -> None:
        cfg = self.cfg
        self.dev = self._evaluation_data(task.dev[: cfg.max_dev_examples], task.scoring)
        held = server_validation(cfg, task)
        self.validation = self._evaluation_data([task.train[i] for i in held], task.scoring) if held else None

    # --- what runtimes do with it ----------------------------------------------------------------------------
    def train_task(self, task: DeviceTask, indices: list[int]):
        """Train ``task`` on ``indices`` of this context's training examples (the task's client method)."""
        return get_method(task.method).train(task, self.backbone, self.train, indices, self.train_cfg)

    def train_tasks(self, tasks: dict[int, DeviceTask], partitions: list[list[int]],
                    done: Callable[[DeviceResult], None] = lambda result: None) -> dict[int, DeviceResult]:
        """Train every task on its device's partition; results by device (``done`` hears of each as it finishes).
        With ``engine = "batched"`` the tasks the batched engine covers train together
        (``engine.batched_training``), the others one after another."""
        if SERVER_ID in tasks:  # a split round (core.split): every device trains with the server, iteration by iteration
            server = tasks[SERVER_ID]
            devices = [t for d, t in sorted(tasks.items()) if d != SERVER_ID]
            results = get_method(server.method).train_joint(server, devices, self.backbone, self.train,
                                                            {t.device_id: partitions[t.device_id] for t in devices}, self.train_cfg)
            for d in sorted(results):
                if d != SERVER_ID:
                    done(results[d])
            return results
        results: dict[int, DeviceResult] = {}
        if self.cfg.engine == "batched":
            chosen: dict[str, list[DeviceTask]] = {}  # by client method: each counts its own devices' work
            for _, t in sorted(tasks.items()):
                if batched_applies(self.backbone, t, get_method(t.method)):
                    chosen.setdefault(t.method, []).append(t)
            for name, group in chosen.items():
                results.update(train_batched(self.backbone, group, self.train,
                                             {t.device_id: partitions[t.device_id] for t in group}, self.train_cfg,
                                             get_method(name), self.cfg.max_batch_tokens, done))
        for d in sorted(set(tasks) - set(results)):
            results[d] = self.train_task(tasks[d], partitions[d])
            done(results[d])
        return {d: results[d] for d in sorted(tasks)}

    def evaluate(self, task: DeviceTask, split: str = "dev") -> dict[str, float]:
        """Accuracy and loss of the model of ``task`` on the dev split or the server's validation split."""
        data = self.dev if split == "dev" else self.validation
        if data is None:
            raise ValueError(f"validation_examples must be > 0 for strategy {self.cfg.strategy!r} "
                             f"(it compares candidate models on the server's validation split)")
        return get_method(task.method).evaluate(task, self.backbone, data, self.train_cfg)
