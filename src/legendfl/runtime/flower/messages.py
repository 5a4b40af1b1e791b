"""Our tasks and results as Flower messages, and back.

A :class:`~legendfl.core.strategy.DeviceTask` travels as a ``RecordDict`` with two records:
``"params"`` (an ``ArrayRecord`` of the tensors the device downloads, under their canonical names) and
``"task"`` (a ``ConfigRecord`` holding the task's fields and the run's configuration as JSON, so a
ClientApp process needs nothing from earlier messages). A :class:`DeviceResult` comes back the same way:
``"params"`` (what the device uploads) and ``"result"`` (counts, measured timings, the capacity report).

Two layers: *payloads* (plain JSON text and NumPy arrays; no torch, so a ClientApp that forwards to a
long-lived worker never imports it) and our dataclasses (torch tensors). The bytes the cost model and the
records count are the tensors' own bytes; Flower's framing adds a little on top.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ...core.lora_layout import LoraLayout
from ...core.strategy import CapacityReport, DeviceResult, DeviceTask, Tensors

QUERY = "query"
TRAIN = "train"
Arrays = dict[str, np.ndarray]


def _record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}) if arrays else ArrayRecord()


def _numpy(record: ArrayRecord) -> Arrays:
    return {k: record[k].numpy() for k in record}


def _to_numpy(tensors: Tensors) -> Arrays:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in tensors.items()}


def _to_torch(arrays: Arrays) -> Tensors:
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


# -- train messages ----------------------------------------------------------------------------------------------
def encode_task(task: DeviceTask, run_config: dict[str, Any], label_names: list[str]) -> RecordDict:
    fields = {"device_id": task.device_id, "round": task.round, "kind": task.kind, "lr": task.lr,
              "settings": task.settings, "layout": task.layout.to_json() if task.layout is not None else None}
    return RecordDict({"params": _record(_to_numpy(task.params)),
                       "task": ConfigRecord({"task-json": json.dumps(fields), "run-config-json": json.dumps(run_config),
                                             "label-names-json": json.dumps(label_names)})})


def task_payload(content: RecordDict) -> dict[str, Any]:
    """A train message as plain data (JSON text and NumPy arrays)."""
    meta = content.config_records["task"]
    return {"task-json": str(meta["task-json"]), "run-config-json": str(meta["run-config-json"]),
            "label-names-json": str(meta["label-names-json"]), "arrays": _numpy(content.array_records["params"])}


def task_from_payload(payload: dict[str, Any]) -> tuple[DeviceTask, dict[str, Any], list[str]]:
    """The task, the run configuration (a ``RunConfig`` as a dict) and the task's label names (the server's)."""
    fields = json.loads(payload["task-json"])
    layout = LoraLayout.from_json(fields["layout"]) if fields["layout"] is not None else None
    task = DeviceTask(device_id=int(fields["device_id"]), round=int(fields["round"]), params=_to_torch(payload["arrays"]),
                      layout=layout, kind=fields["kind"], lr=float(fields["lr"]), settings=fields["settings"])
    return task, json.loads(payload["run-config-json"]), json.loads(payload["label-names-json"])


def decode_task(content: RecordDict) -> tuple[DeviceTask, dict[str, Any], list[str]]:
    return task_from_payload(task_payload(content))


def result_payload(result: DeviceResult, node: dict[str, Any]) -> dict[str, Any]:
    """``node`` carries what the server cannot see: set-up time, emulation, host."""
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in ("params", "report")}
    fields["report"] = dataclasses.asdict(result.report) if result.report is not None else None
    fields["node"] = node
    return {"result-json": json.dumps(fields), "arrays": _to_numpy(result.params)}


def result_content(payload: dict[str, Any]) -> RecordDict:
    return RecordDict({"params": _record(payload["arrays"]), "result": ConfigRecord({"result-json": payload["result-json"]})})


def encode_result(result: DeviceResult, node: dict[str, Any]) -> RecordDict:
    return result_content(result_payload(result, node))


def decode_result(content: RecordDict) -> tuple[DeviceResult, dict[str, Any]]:
    fields = json.loads(str(content.config_records["result"]["result-json"]))
    node = fields.pop("node")
    report = fields.pop("report")
    result = DeviceResult(params=_to_torch(_numpy(content.array_records["params"])), **fields)
    result.report = CapacityReport(**report) if report is not None else None
    return result, node


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
    return json.loads(str(content.config_records["identity"]["identity-json"]))
