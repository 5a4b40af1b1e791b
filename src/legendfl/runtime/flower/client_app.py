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
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ...config import RunConfig
from .messages import decode_query, encode_identity, result_content, task_payload
from .node import NodeSettings, host_identity, local_examples, train_payload
from .worker import forward

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


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Who this node is: its device id, how much data it holds, its machine."""
    cfg_json, label_names = decode_query(msg.content)
    cfg = RunConfig.from_record(cfg_json, "the server's run configuration")
    settings = NodeSettings.from_node_config(dict(context.node_config))
    settings.check(cfg)
    examples = local_examples(cfg, settings, label_names)
    identity = {"device_id": settings.partition_id, "num_examples": len(examples),
                "data_file": settings.data_file, "emulate_device": settings.emulate_device, **host_identity()}
    return Message(encode_identity(identity), reply_to=msg)


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
        reply = forward(settings.worker_socket, payload, node_config, age)
    else:
        reply = train_payload(payload, node_config, age)
    return Message(result_content(reply), reply_to=msg)
