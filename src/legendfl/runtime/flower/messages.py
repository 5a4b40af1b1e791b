"""Our tasks and results as Flower messages, and back.

A :class:`~legendfl.core.strategy.DeviceTask` travels as a ``RecordDict`` with two records:
``"params"`` (an ``ArrayRecord`` of the tensors the device downloads, under their canonical names) and
``"task"`` (a ``ConfigRecord`` holding the task's fields and the run's configuration as JSON, so a
ClientApp process needs nothing from earlier messages). A :class:`DeviceResult` comes back the same way:
``"params"`` (what the device uploads) and ``"result"`` (counts, measured timings, the capacity report).

The bytes the cost model and the records count are the tensors' own bytes (as in the in-process runtime);
Flower's framing adds a little on top.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from ...core.lora_layout import LoraLayout
from ...core.strategy import CapacityReport, DeviceResult, DeviceTask, Tensors

QUERY = "query"
TRAIN = "train"


def _arrays(tensors: Tensors) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()}) if tensors else ArrayRecord()


def _tensors(record: ArrayRecord) -> Tensors:
    return dict(record.to_torch_state_dict()) if len(record) else {}


def encode_task(task: DeviceTask, run_config: dict[str, Any], num_labels: int) -> RecordDict:
    fields = {"device_id": task.device_id, "round": task.round, "kind": task.kind, "lr": task.lr,
              "settings": task.settings, "layout": task.layout.to_json() if task.layout is not None else None}
    return RecordDict({"params": _arrays(task.params),
                       "task": ConfigRecord({"task-json": json.dumps(fields), "run-config-json": json.dumps(run_config),
                                               "num-labels": num_labels})})


def decode_task(content: RecordDict) -> tuple[DeviceTask, dict[str, Any], int]:
    """The task, the run configuration (a ``RunConfig`` as a dict) and the task's number of labels."""
    meta = content.config_records["task"]
    fields = json.loads(str(meta["task-json"]))
    layout = LoraLayout.from_json(fields["layout"]) if fields["layout"] is not None else None
    task = DeviceTask(device_id=int(fields["device_id"]), round=int(fields["round"]),
                      params=_tensors(content.array_records["params"]), layout=layout, kind=fields["kind"],
                      lr=float(fields["lr"]), settings=fields["settings"])
    return task, json.loads(str(meta["run-config-json"])), int(meta["num-labels"])


def encode_result(result: DeviceResult, node: dict[str, Any]) -> RecordDict:
    """``node`` carries what the server cannot see: setup time, emulation, host."""
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in ("params", "report")}
    fields["report"] = dataclasses.asdict(result.report) if result.report is not None else None
    fields["node"] = node
    return RecordDict({"params": _arrays(result.params), "result": ConfigRecord({"result-json": json.dumps(fields)})})


def decode_result(content: RecordDict) -> tuple[DeviceResult, dict[str, Any]]:
    fields = json.loads(str(content.config_records["result"]["result-json"]))
    node = fields.pop("node")
    report = fields.pop("report")
    result = DeviceResult(params=_tensors(content.array_records["params"]), **fields)
    result.report = CapacityReport(**report) if report is not None else None
    return result, node


def encode_query(run_config: dict[str, Any]) -> RecordDict:
    return RecordDict({"query": ConfigRecord({"run-config-json": json.dumps(run_config)})})


def encode_identity(identity: dict[str, Any]) -> RecordDict:
    return RecordDict({"identity": ConfigRecord({"identity-json": json.dumps(identity)})})


def decode_identity(content: RecordDict) -> dict[str, Any]:
    return json.loads(str(content.config_records["identity"]["identity-json"]))
