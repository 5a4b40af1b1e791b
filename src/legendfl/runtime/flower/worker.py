"""A long-lived training worker beside a SuperNode, so torch and the model are loaded once, not per message.

Flower 1.41 runs every message in a fresh ClientApp process. On a Jetson, importing torch and transformers
and loading the model costs tens of seconds, every round. Start one worker per device instead::

    legendfl flower worker --socket /run/legendfl/node.sock &
    flower-supernode ... --node-config "partition-id=3 worker-socket='/run/legendfl/node.sock'"

The ClientApp then forwards each task (plain JSON and NumPy arrays) over the Unix socket and returns the
worker's reply; it never imports torch. The socket is created with mode 0600 and every connection is
authenticated with a random key in ``<socket>.key`` (mode 0600): only the same user can hand it work.
Tasks run one at a time; a task that fails is answered with its error and the worker goes on.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from .node import train_payload

log = logging.getLogger(__name__)


def _key_path(socket_path: str) -> Path:
    return Path(socket_path + ".key")


def serve(socket_path: str, *, max_tasks: int | None = None) -> int:
    """Serve tasks on ``socket_path`` until stopped (or ``max_tasks`` were served); returns tasks served."""
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # a stale socket of a worker that died
    key = secrets.token_bytes(32)
    key_file = _key_path(socket_path)
    key_file.touch(mode=0o600)
    key_file.chmod(0o600)
    key_file.write_bytes(key)
    served = 0
    with Listener(str(path), family="AF_UNIX", authkey=key) as listener:
        path.chmod(0o600)
        log.info("legendfl worker %d listening on %s", os.getpid(), path)
        while max_tasks is None or served < max_tasks:
            try:
                conn = listener.accept()
            except Exception as err:  # a client that failed authentication
                log.warning("refused a connection: %s", err)
                continue
            with conn:
                try:
                    kind, payload, node_config, age_s = conn.recv()
                    if kind != "train":
                        raise ValueError(f"request kind must be 'train', got {kind!r}")
                    t0 = time.perf_counter()
                    reply = train_payload(payload, node_config, age_s)
                    conn.send(("ok", reply))
                    log.info("task for device %s done in %.1fs", node_config.get("partition-id"), time.perf_counter() - t0)
                except Exception as err:  # answer with the error; the worker stays up
                    conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"))
            served += 1
    return served


def forward(socket_path: str, payload: dict[str, Any], node_config: dict[str, Any], age_s: float) -> dict[str, Any]:
    """Hand one task to the worker on ``socket_path`` and wait for its result payload."""
    key_file = _key_path(socket_path)
    if not key_file.exists():
        raise ConnectionError(f"no legendfl worker at worker-socket {socket_path!r} (missing {key_file})")
    with Client(socket_path, family="AF_UNIX", authkey=key_file.read_bytes()) as conn:
        conn.send(("train", payload, node_config, age_s))
        status, reply = conn.recv()
    if status != "ok":
        raise RuntimeError(f"worker at {socket_path} failed: {reply}")
    return reply
