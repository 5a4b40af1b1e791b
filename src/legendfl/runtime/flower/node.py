"""A SuperNode's side of a task, shared by the ClientApp and the long-lived worker (no Flower imports).

``NodeSettings`` validates a node's ``--node-config``; :func:`train_payload` trains one task given as plain
data (JSON text and NumPy arrays) on this node's data and returns the result as plain data. Torch and the
model are imported only when a task is trained here, so a ClientApp that forwards to a worker never loads them.
"""
from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import dataclass
from typing import Any

from ...config import RunConfig
from ...core.work import DeviceTiming
from .payloads import result_payload, task_from_payload


@dataclass(frozen=True)
class NodeSettings:
    """A SuperNode's ``--node-config``, validated."""

    partition_id: int
    num_partitions: int | None = None
    data_file: str | None = None
    emulate_device: int | None = None
    emulate_time_scale: float = 1.0
    threads: int | None = None
    worker_socket: str | None = None

    KEYS = ("partition-id", "num-partitions", "data-file", "emulate-device", "emulate-time-scale", "threads",
            "worker-socket")

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> "NodeSettings":
        unknown = sorted(set(node_config) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"unknown node-config keys {unknown}; allowed: {list(cls.KEYS)}")
        if "partition-id" not in node_config:
            raise ValueError("node-config must set partition-id (the device id of this SuperNode)")

        def integer(key: str, minimum: int) -> int | None:
            v = node_config.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"node-config {key} must be an integer >= {minimum}, got {v!r}")
            return v

        scale = node_config.get("emulate-time-scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise ValueError(f"node-config emulate-time-scale must be a number >= 0, got {scale!r}")
        paths = {}
        for key in ("data-file", "worker-socket"):
            value = node_config.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"node-config {key} must be a path, got {value!r}")
            paths[key] = value
        return cls(integer("partition-id", 0), integer("num-partitions", 1), paths["data-file"],
                   integer("emulate-device", 0), float(scale), integer("threads", 1), paths["worker-socket"])

    def check(self, cfg: RunConfig) -> None:
        if self.num_partitions is not None and self.num_partitions != cfg.num_devices:
            raise ValueError(f"node-config num-partitions ({self.num_partitions}) must equal the run's num_devices "
                             f"({cfg.num_devices})")
        if self.data_file is None and self.partition_id >= cfg.num_devices:
            raise ValueError(f"node-config partition-id must be in [0, {cfg.num_devices - 1}], got {self.partition_id}")


def local_examples(cfg: RunConfig, settings: NodeSettings, label_names: list[str]) -> list:
    """This device's training examples, in the order the in-process runtime gives them, labelled by the
    server's ``label_names`` (a device's own file may hold only some of the labels)."""
    from ...data.run_data import load_run_task, run_partitions
    from ...data.tasks import load_task

    if settings.data_file is not None:
        own = load_task("file", data_file=settings.data_file, text_columns=cfg.text_columns,
                        label_column=cfg.label_column, seed=cfg.train.seed)
        unknown = sorted(set(own.label_names) - set(label_names))
        if unknown:
            raise ValueError(f"node-config data-file {settings.data_file!r} has labels {unknown}; the run's labels "
                             f"are {label_names}")
        index = [label_names.index(name) for name in own.label_names]
        return [(a, b, index[y]) for a, b, y in own.train]
    task = load_run_task(cfg)
    return [task.train[i] for i in run_partitions(cfg, task)[settings.partition_id]]


_CACHE: dict[str, Any] = {}


def _node_context(cfg: RunConfig, settings: NodeSettings, label_names: list[str]):
    """This node's run context: the model and its tokenised local data (cached within the process)."""
    import torch

    from ..context import RunContext

    key = repr((cfg.to_json(), settings, label_names))
    if key not in _CACHE:
        examples = local_examples(cfg, settings, label_names)
        _CACHE.clear()
        threads = settings.threads or cfg.threads
        if threads:  # this node process's own setting (node-config threads, else the run's)
            torch.set_num_threads(threads)
        _CACHE[key] = RunContext.for_client(cfg, examples, label_names)
    return _CACHE[key]


def host_identity() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "pid": os.getpid(),
            "cpus": os.cpu_count()}


def train_payload(payload: dict[str, Any], node_config: dict[str, Any], age_s: float) -> dict[str, Any]:
    """Train one task given as plain data; the ClientApp and the long-lived worker both call this.

    ``age_s``: seconds since the ClientApp process that received the message started (its start-up counts
    as the device's busy time, so the server does not mistake it for transfer time).
    """
    started = time.perf_counter() - age_s
    task, cfg_json, label_names = task_from_payload(payload)
    cfg = RunConfig.from_record(cfg_json, "the server's run configuration")
    settings = NodeSettings.from_node_config(node_config)
    settings.check(cfg)
    if task.device_id != settings.partition_id:
        raise ValueError(f"task for device {task.device_id} sent to the node with partition-id {settings.partition_id}")
    ctx = _node_context(cfg, settings, label_names)
    start = time.perf_counter()
    result = ctx.train_task(task, ctx.partitions[0])
    node: dict[str, Any] = {"setup_s": start - started, "train_s": time.perf_counter() - start, **host_identity()}
    if settings.emulate_device is not None:
        from ...fleet.cost_model import device_timing, timed_by
        from ...fleet.devices import load_fleet

        fleet = load_fleet(cfg.fleet, max(cfg.num_devices, settings.emulate_device + 1), cfg.train.seed)
        state = fleet.state(settings.emulate_device, task.round)
        timing = device_timing(state, result.work, cfg.cost_model)
        # the emulated device's download, compute and upload replace this machine's training time
        pause = max(0.0, timing.total_s * settings.emulate_time_scale - (time.perf_counter() - start))
        time.sleep(pause)
        result.timing = timing
        node["emulated"] = {"device": settings.emulate_device, "kind": fleet.devices[settings.emulate_device].kind,
                            "mode": state.mode, "timed_by": timed_by(state, cfg.cost_model),
                            **timing.to_json(), "sleep_s": pause}
    else:
        # compute as measured here; download and upload are measured by the server (it sees the round trip)
        result.timing = DeviceTiming(0.0, result.measured_forward_s, result.measured_backward_s, 0.0)
    node["busy_s"] = time.perf_counter() - started
    return result_payload(result, node)
