"""A run's data as every runtime must see it: the task its options name, and its partition over devices.

The in-process runner, the Flower ServerApp and every ClientApp call these, so a device's examples (and
their order) are the same whichever runtime trains it.
"""
from __future__ import annotations

from .partition import partition
from .tasks import TaskData, load_task


def load_run_task(cfg) -> TaskData:
    """The task of a :class:`~legendfl.config.RunConfig` (built-in, user file or hub name)."""
    return load_task(cfg.task, data_file=cfg.data_file, dev_file=cfg.dev_file, text_columns=cfg.text_columns,
                     label_column=cfg.label_column, seed=cfg.seed)


def run_partitions(cfg, task: TaskData) -> list[list[int]]:
    """Indices of ``task.train`` held by each of the run's devices."""
    return partition([ex[2] for ex in task.train], cfg.num_devices, scheme=cfg.partition, alpha=cfg.dirichlet_alpha,
                     seed=cfg.seed, max_examples_per_device=cfg.max_examples_per_device)
