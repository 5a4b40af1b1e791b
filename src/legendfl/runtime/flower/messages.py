"""Task and result payloads (``payloads.py``) as Flower messages, and back.

A train message is a ``RecordDict`` with ``"params"`` (an ``ArrayRecord`` of the tensors the device
downloads, under their canonical names), ``"base"`` (an ``ArrayRecord`` of its change to the frozen weights, if
any) and ``"task"`` (a ``ConfigRecord`` of the payload's JSON texts).
A reply has ``"params"`` (what the device uploads) and ``"result"``. The bytes the cost model and the
records count are the tensors' own bytes; Flower's framing adds a little on top.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ...core.strategy import DeviceResult, DeviceTask
from .payloads import Arrays, result_from_payload, result_payload, task_from_payload, task_to_payload

QUERY = "query"
TRAIN = "train"
_TASK_TEXTS = ("task-json", "run-config-json", "label-names-json")


def _record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}) if arrays else ArrayRecord()


def _numpy(record: ArrayRecord) -> Arrays:
    return {k: record[k].numpy() for k in record}


# -- train messages ----------------------------------------------------------------------------------------------
def encode_task(task: DeviceTask, run_config: dict[str, Any], label_names: list[str]) -> RecordDict:
    payload = task_to_payload(task, run_config, label_names)
    return RecordDict({"params": _record(payload["arrays"]), "base": _record(payload["base-arrays"]),
                       "task": ConfigRecord({k: payload[k] for k in _TASK_TEXTS})})


def task_payload(content: RecordDict) -> dict[str, Any]:
    """A train message as plain data (JSON text and NumPy arrays)."""
    meta = content.config_records["task"]
    base = content.array_records["base"] if "base" in content.array_records else ArrayRecord()
    return {**{k: str(meta[k]) for k in _TASK_TEXTS}, "arrays": _numpy(content.array_records["params"]),
            "base-arrays": _numpy(base)}


def decode_task(content: RecordDict) -> tuple[DeviceTask, dict[str, Any], list[str]]:
    return task_from_payload(task_payload(content))


def result_content(payload: dict[str, Any]) -> RecordDict:
    return RecordDict({"params": _record(payload["arrays"]), "result": ConfigRecord({"result-json": payload["result-json"]})})


def encode_result(result: DeviceResult, node: dict[str, Any]) -> RecordDict:
    return result_content(result_payload(result, node))


def decode_result(content: RecordDict) -> tuple[DeviceResult, dict[str, Any]]:
    return result_from_payload({"result-json": str(content.config_records["result"]["result-json"]),
                                "arrays": _numpy(content.array_records["params"])})


# -- identity query ----------------------------------------------------------------------------------------------
def encode_query(run_config: dict[str, Any], label_names: list[str]) -> RecordDict:
    return RecordDict({"query": ConfigRecord({"run-config-json": json.dumps(run_config),
                                              "label-names-json": json.dumps(label_names)})})


def decode_query(content: RecordDict) -> tuple[dict[str, Any], list[str]]:
    meta = content.config_records["query"]
    return json.loads(str(meta["run-config-json"])), json.loads(str(meta["label-names-json"]))


def encode_identity(identity: dict[str, Any]) -> RecordDict:
    return RecordDict({"identity": ConfigRecord({"identity-json": json.dumps(identity)})})


def decode_identity(content: RecordDict) -> dict[str, Any]:
    """A node's answer to the query; ``ValueError`` unless it names a device id (>= 0), the number of examples
    the device holds (> 0) and a host name."""
    ident = json.loads(str(content.config_records["identity"]["identity-json"]))
    if not isinstance(ident, dict):
        raise ValueError("identity is not a JSON object")
    for key, low in (("device_id", 0), ("num_examples", 1)):
        value = ident.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"identity {key} must be an integer >= {low}, got {value!r}")
    if not isinstance(ident.get("hostname"), str):
        raise ValueError(f"identity hostname must be a string, got {ident.get('hostname')!r}")
    return ident
