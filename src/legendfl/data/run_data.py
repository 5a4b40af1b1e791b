"""A run's data as every runtime must see it: the task its options name, and its partition over devices.

The in-process runner, the Flower ServerApp and every ClientApp call these, so a device's examples (and
their order) are the same whichever runtime trains it.
"""
from __future__ import annotations

from ..core.seeding import rng
from .generative_tasks import GENERATIVE_TASKS, LETTERS, load_generative_task
from .partition import partition
from .tasks import TaskData, load_task


def is_generative(cfg) -> bool:
    """Whether the run's task is generative (a decoder trains on prompt/answer pairs)."""
    return cfg.task == "instructions" or (cfg.task in GENERATIVE_TASKS and not cfg.data_file)


def load_run_task(cfg) -> TaskData:
    """The task of a :class:`~legendfl.config.RunConfig` (built-in, generative, user file or hub name)."""
    if is_generative(cfg):
        files = ({"data_file": cfg.data_file, "dev_file": cfg.dev_file, "prompt_field": cfg.prompt_field,
                  "response_field": cfg.response_field} if cfg.task == "instructions" else {})
        gen = load_generative_task(cfg.task, cfg.max_dev_examples, cfg.train.seed, **files)
        labels = list(LETTERS) if gen.scoring == "letter" else list(gen.answers) if gen.scoring == "choice" else ["answer"]
        return TaskData(gen.name, gen.train, gen.dev, labels, gen.scoring)
    return load_task(cfg.task, data_file=cfg.data_file, dev_file=cfg.dev_file, text_columns=cfg.text_columns,
                     label_column=cfg.label_column, seed=cfg.train.seed)


def server_validation(cfg, task: TaskData) -> list[int]:
    """Indices of ``task.train`` the server holds out as its validation split (no device trains on them).

    Strategies that choose between candidate models (FedAdapter's trial groups) compare them on this split,
    never on the dev split whose accuracy is reported. At most a tenth of the training set.
    """
    n = min(cfg.validation_examples, len(task.train) // 10)
    if n <= 0:
        return []
    return sorted(int(i) for i in rng(cfg.train.seed, "validation").choice(len(task.train), n, replace=False))


def run_partitions(cfg, task: TaskData) -> list[list[int]]:
    """Indices of ``task.train`` held by each of the run's devices (the server's validation split excluded)."""
    held = set(server_validation(cfg, task))
    keep = [i for i in range(len(task.train)) if i not in held]
    parts = partition([task.train[i][2] for i in keep], cfg.num_devices, scheme=cfg.partition, alpha=cfg.dirichlet_alpha,
                      seed=cfg.train.seed, max_examples_per_device=cfg.max_examples_per_device)
    return [[keep[j] for j in p] for p in parts]
