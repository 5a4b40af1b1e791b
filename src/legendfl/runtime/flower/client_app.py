"""The Flower ClientApp: one device of the federation, training our trainer on its own data.

Each SuperNode is one device. It is started with its identity and data in ``--node-config``::

    flower-supernode ... --node-config "partition-id=3 num-partitions=80"
    flower-supernode ... --node-config "partition-id=3 data-file='/data/my_reviews.tsv'"

Keys (all optional except ``partition-id``):

* ``partition-id``: the device id the strategy knows this node by; with no ``data-file`` the node trains on
  that partition of the run's task, cut exactly as the in-process runtime cuts it (same seed, same scheme);
* ``num-partitions``: checked against the run's ``num_devices`` when given;
* ``data-file``: the device's own local data (CSV/TSV/JSON/JSONL, the run's columns); no partitioning;
* ``emulate-device``: train for real, then sleep so that training takes as long as this entry of the run's
  fleet would take for the same work (virtual seconds times ``emulate-time-scale``), and report that
  device's timings: heterogeneity on a loopback or lab cluster;
* ``emulate-time-scale`` (default 1.0) and ``threads`` (torch CPU threads of this node);
* ``worker-socket``: hand training to a long-lived ``legendfl flower worker --socket PATH`` on this machine.

Flower 1.41 starts a fresh ClientApp process for every message, so without a worker each message pays for
importing torch and loading the model and data (reported as ``setup_s`` in every result; measured in
docs/flower.md). A worker pays that once; the ClientApp then only forwards plain arrays to it.
"""
from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ...config import RunConfig
from ...core.strategy import CapacityReport
from .messages import decode_query, encode_identity, result_content, result_payload, task_from_payload, task_payload

_IMPORTED = time.perf_counter()
app = ClientApp()


def _process_age_s() -> float:
    """Seconds since this process started (Linux: from /proc, so Python and Flower's own start-up count);
    elsewhere since this module was imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return max(0.0, time.time() - (boot + int(fields[19]) / ticks))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.perf_counter() - _IMPORTED


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
                        label_column=cfg.label_column, seed=cfg.seed)
        unknown = sorted(set(own.label_names) - set(label_names))
        if unknown:
            raise ValueError(f"node-config data-file {settings.data_file!r} has labels {unknown}; the run's labels "
                             f"are {label_names}")
        index = [label_names.index(name) for name in own.label_names]
        return [(a, b, index[y]) for a, b, y in own.train]
    task = load_run_task(cfg)
    return [task.train[i] for i in run_partitions(cfg, task)[settings.partition_id]]


_CACHE: dict[str, Any] = {}


def _node_state(cfg: RunConfig, settings: NodeSettings, label_names: list[str]):
    """Model, tokenised local data and training settings of this node (cached within the process)."""
    import torch

    from ...models.backbone import load_backbone
    from ...models.trainer import TokenizedData, TrainConfig
    from ..executors import DeviceData

    key = repr((cfg.to_json(), settings, label_names))
    if key not in _CACHE:
        threads = settings.threads or cfg.threads
        if threads:
            torch.set_num_threads(threads)
        backbone = load_backbone(cfg.model, len(label_names), cfg.seed, cfg.device)
        examples = local_examples(cfg, settings, label_names)
        _CACHE.clear()
        _CACHE[key] = (DeviceData(backbone, TokenizedData(backbone.tokenizer, examples, cfg.max_length),
                                  TrainConfig.from_run(cfg)),
                       list(range(len(examples))))
    return _CACHE[key]


def _host() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "pid": os.getpid(),
            "cpus": os.cpu_count()}


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Who this node is: its device id, how much data it holds, its machine."""
    cfg_json, label_names = decode_query(msg.content)
    cfg = RunConfig(**cfg_json)
    settings = NodeSettings.from_node_config(dict(context.node_config))
    settings.check(cfg)
    examples = local_examples(cfg, settings, label_names)
    identity = {"device_id": settings.partition_id, "num_examples": len(examples),
                "data_file": settings.data_file, "emulate_device": settings.emulate_device, **_host()}
    return Message(encode_identity(identity), reply_to=msg)


def train_payload(payload: dict[str, Any], node_config: dict[str, Any], age_s: float) -> dict[str, Any]:
    """Train one task given as plain data; the ClientApp and the long-lived worker both call this.

    ``age_s``: seconds since the ClientApp process that received the message started (its start-up counts
    as the device's busy time, so the server does not mistake it for transfer time).
    """
    started = time.perf_counter() - age_s
    from ..executors import train as run_task, work_of

    task, cfg_json, label_names = task_from_payload(payload)
    cfg = RunConfig(**cfg_json)
    settings = NodeSettings.from_node_config(node_config)
    settings.check(cfg)
    if task.device_id != settings.partition_id:
        raise ValueError(f"task for device {task.device_id} sent to the node with partition-id {settings.partition_id}")
    data, indices = _node_state(cfg, settings, label_names)
    start = time.perf_counter()
    result = run_task(task, data, indices)
    work = work_of(task, result, data.backbone.num_layers)
    node: dict[str, Any] = {"setup_s": start - started, "train_s": time.perf_counter() - start, **_host()}
    if settings.emulate_device is not None:
        from ...fleet.cost_model import capacity_report, device_timing, timed_by
        from ...fleet.devices import load_fleet

        fleet = load_fleet(cfg.fleet, max(cfg.num_devices, settings.emulate_device + 1), cfg.seed)
        state = fleet.state(settings.emulate_device, task.round)
        timing = device_timing(state, work, cfg.cost_model)
        # the emulated device's download, compute and upload replace this machine's training time
        pause = max(0.0, timing.total_s * settings.emulate_time_scale - (time.perf_counter() - start))
        time.sleep(pause)
        result.report = capacity_report(state, work, timing)
        node["emulated"] = {"device": settings.emulate_device, "kind": fleet.devices[settings.emulate_device].kind,
                            "mode": state.mode, "timed_by": timed_by(state, cfg.cost_model),
                            **timing.to_json(), "sleep_s": pause}
    else:
        depth = max(1, work.trained_depth)
        # upload time per unit rank is measured by the server (it sees when the reply arrives)
        result.report = CapacityReport(result.measured_backward_s / depth, 0.0, result.measured_forward_s)
    node["busy_s"] = time.perf_counter() - started
    return result_payload(result, node)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the task on local data; return the uploaded tensors, the work done and measured timings.

    With ``worker-socket`` in the node config the task is handed to a long-lived worker process (which keeps
    torch, the model and the data loaded) and this process never imports torch.
    """
    age_at_start = _process_age_s()
    t0 = time.perf_counter()
    node_config = dict(context.node_config)
    settings = NodeSettings.from_node_config(node_config)
    payload = task_payload(msg.content)
    age = age_at_start + time.perf_counter() - t0
    if settings.worker_socket is not None:
        from .worker import forward

        reply = forward(settings.worker_socket, payload, node_config, age)
    else:
        reply = train_payload(payload, node_config, age)
    return Message(result_content(reply), reply_to=msg)
