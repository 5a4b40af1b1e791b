"""Our tasks and results as plain data (JSON text and NumPy arrays), and back; no Flower, no torch at import.

A task payload holds ``task-json`` (its fields: device, round, method, learning rate, layouts, typed local
terms), ``run-config-json`` (the run's options, so a node needs nothing from earlier messages),
``label-names-json``, ``arrays`` (the tensors the device downloads, by canonical key) and ``base-arrays`` (a
task's change to the frozen weights, ``core.base_delta.BaseDelta``: its parts' tensors under ``held/``, ``new/`` and
``new_dense/``; empty for a task without one). A result payload
holds ``result-json`` (counts, work, timing, metrics and what the node adds: set-up time, host, emulation)
and ``arrays`` (what the device uploads). ``messages.py`` wraps them into Flower records.
"""
from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.hooks import term_from_json
from ...core.strategy import DeviceResult, DeviceTask, Tensors
from ...core.task_config import task_config_from_json
from ...core.work import DeviceTiming, DeviceWork

if TYPE_CHECKING:  # torch: a forwarding ClientApp never loads it
    from ...core.base_delta import BaseDelta

Arrays = dict[str, np.ndarray]


def to_numpy(tensors: Tensors) -> Arrays:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in tensors.items()}


def to_torch(arrays: Arrays) -> Tensors:
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def task_fields(task: DeviceTask) -> dict[str, Any]:
    return {"device_id": task.device_id, "round": task.round, "method": task.method, "lr": task.lr,
            "config": task.config.to_json() if task.config is not None else None,
            "local_terms": [t.to_json() for t in task.local_terms], "base_delta": task.base_delta is not None}


_BASE_PARTS = ("held", "new", "new_dense")


def base_delta_arrays(delta: BaseDelta | None) -> Arrays:
    """A task's change (or None) as arrays under ``held/``, ``new/`` and ``new_dense/``."""
    if delta is None:
        return {}
    return {f"{part}/{k}": v for part in _BASE_PARTS for k, v in to_numpy(getattr(delta, part)).items()}


def base_delta_from_arrays(arrays: Arrays) -> BaseDelta:
    from ...core.base_delta import BaseDelta  # imports torch: here, not at this module's import

    parts: dict[str, Arrays] = {part: {} for part in _BASE_PARTS}
    for key, value in arrays.items():
        part, _, name = key.partition("/")
        if part not in parts:
            raise ValueError(f"base-arrays: {key!r} is not under one of {list(_BASE_PARTS)}")
        parts[part][name] = value
    return BaseDelta(**{part: to_torch(values) for part, values in parts.items()})


def task_to_payload(task: DeviceTask, run_config: dict[str, Any], label_names: list[str]) -> dict[str, Any]:
    return {"task-json": json.dumps(task_fields(task)), "run-config-json": json.dumps(run_config),
            "label-names-json": json.dumps(label_names), "arrays": to_numpy(task.params),
            "base-arrays": base_delta_arrays(task.base_delta)}


def task_from_payload(payload: dict[str, Any]) -> tuple[DeviceTask, dict[str, Any], list[str]]:
    """The task, the run configuration (a ``RunConfig`` as a dict) and the task's label names (the server's)."""
    # task configs and local terms are registered by the modules that define them: every built-in strategy and
    # installed plugin is imported first (a fresh ClientApp process may have imported none of them yet)
    from ... import strategies  # noqa: F401
    f = json.loads(payload["task-json"])
    task = DeviceTask(device_id=int(f["device_id"]), round=int(f["round"]), params=to_torch(payload["arrays"]),
                      config=task_config_from_json(f["config"]), method=str(f["method"]), lr=float(f["lr"]),
                      local_terms=tuple(term_from_json(t) for t in f["local_terms"]),
                      base_delta=base_delta_from_arrays(payload.get("base-arrays", {})) if f.get("base_delta") else None)
    return task, json.loads(payload["run-config-json"]), json.loads(payload["label-names-json"])


def result_payload(result: DeviceResult, node: dict[str, Any]) -> dict[str, Any]:
    """``node`` carries what the server cannot see: set-up time, emulation, host."""
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
              if f.name not in ("params", "work", "timing", "iterations")}
    fields["work"] = result.work.to_json() if result.work is not None else None
    fields["iterations"] = [w.to_json() for w in result.iterations]
    fields["timing"] = dataclasses.asdict(result.timing) if result.timing is not None else None
    fields["node"] = node
    return {"result-json": json.dumps(fields), "arrays": to_numpy(result.params)}


def result_from_payload(payload: dict[str, Any]) -> tuple[DeviceResult, dict[str, Any]]:
    fields = json.loads(payload["result-json"])
    node = fields.pop("node")
    work, timing, iterations = fields.pop("work"), fields.pop("timing"), fields.pop("iterations")
    result = DeviceResult(params=to_torch(payload["arrays"]), **fields)
    result.work = DeviceWork(**work) if work is not None else None
    result.iterations = [DeviceWork(**w) for w in iterations]
    result.timing = DeviceTiming(**timing) if timing is not None else None
    return result, node
