"""One record type for every runtime: a round's line of ``rounds.jsonl``, built and written here.

A record holds the round, strategy, runtime and clock (``"virtual"``: the simulator's cost model;
``"real"``: Flower's wall clock), the clock's time and traffic fields (``virtual_time_s`` or
``real_time_s``, ``round_time_s``, ``mean_waiting_s``, bytes), the server's wall seconds for the round
(``wall_s``), accuracy and loss where evaluated, the strategy's aggregation metrics, one entry per device
that answered and, where some did not, ``missing``.

A device's entry has the same fields in every runtime (:func:`device_entry`: its timing by phase, waiting,
examples, tokens, FLOPs, bytes, loss, trainable parameters, its work and the strategy's per-device
configuration); a runtime adds what only it knows (the simulator: device type, power mode, bandwidth;
Flower: node, host, round trip, emulation).

The metrics read a record through :class:`RoundPoint` (:func:`round_points`): its round, time on its clock,
traffic, accuracy, waiting and round time, by field; the key names are written here and in the clock only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..core.files import write_atomic
from ..core.strategy import DeviceResult, DeviceTask


def time_field(records: list[dict]) -> str:
    """The cumulative time field of these records: ``virtual_time_s`` or ``real_time_s``."""
    return "real_time_s" if records and records[0].get("clock") == "real" else "virtual_time_s"


@dataclass(frozen=True)
class RoundPoint:
    """What the summaries and comparisons read of one round's record."""

    round: int
    time_s: float  # cumulative, on the record's clock (``virtual_time_s`` or ``real_time_s``)
    traffic_bytes: float  # cumulative bytes down and up
    accuracy: float | None  # None where the round was not evaluated
    mean_waiting_s: float
    round_time_s: float

    @classmethod
    def of(cls, record: dict, time_key: str) -> "RoundPoint":
        """The point of one record (values as recorded; a field missing or not a number is refused by name)."""
        def number(key: str, optional: bool = False):
            value = record.get(key)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"round {record.get('round')!r}: {key} must be a number, got {value!r}")
            return value

        return cls(round=number("round"), time_s=number(time_key), traffic_bytes=number("traffic_bytes"),
                   accuracy=number("accuracy", optional=True), mean_waiting_s=number("mean_waiting_s"),
                   round_time_s=number("round_time_s"))

    @property
    def evaluated(self) -> bool:
        return self.accuracy is not None

    def along(self, axis: str) -> float:
        """Its position along ``axis``: ``"time"`` (seconds on its clock) or ``"traffic"`` (bytes)."""
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        return self.time_s if axis == "time" else self.traffic_bytes


AXES = ("time", "traffic")


def round_points(records: Iterable[dict | RoundPoint]) -> list[RoundPoint]:
    """A run's records (lines of ``rounds.jsonl``, or points already read) as :class:`RoundPoint` s."""
    records = list(records)
    if all(isinstance(r, RoundPoint) for r in records):
        return records  # type: ignore[return-value]
    key = time_field(records)  # type: ignore[arg-type]
    return [r if isinstance(r, RoundPoint) else RoundPoint.of(r, key) for r in records]


def evaluated(records: Sequence[dict | RoundPoint]) -> list[RoundPoint]:
    """The evaluated rounds of a run, as points."""
    return [p for p in round_points(records) if p.evaluated]


def timing_fields(timing: dict[str, float], waiting_s: float) -> dict[str, float]:
    """A device's seconds by phase, ``total_s`` and ``waiting_s``, as records show them (rounded to 0.1 ms)."""
    return {**{k: round(v, 4) for k, v in timing.items()}, "waiting_s": round(waiting_s, 4)}


def device_entry(result: DeviceResult, task: DeviceTask, timing: dict[str, float], waiting_s: float,
                 config_log: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """One device's line of a round record (``timing``: seconds by phase and ``total_s``)."""
    return {**extra, **timing_fields(timing, waiting_s),
            "examples": result.num_examples, "tokens": result.num_tokens,
            "forward_flops": result.work.forward_flops if result.work is not None else 0.0,
            "backward_flops": result.work.backward_flops if result.work is not None else 0.0,
            "download_bytes": result.work.download_bytes if result.work is not None else task.download_bytes,
            "upload_bytes": result.work.upload_bytes if result.work is not None else result.upload_bytes,
            "train_loss": round(result.train_loss, 5),
            "wall_s": round(result.wall_time_s, 3),
            "trainable_params": int(sum(v.numel() for v in task.params.values())),
            **config_log.get(str(result.device_id), {}),
            "work": result.work.to_json() if result.work is not None else None}


@dataclass
class RoundRecord:
    """One round, as every runtime records it; :meth:`to_json` is its line of ``rounds.jsonl``."""

    round: int
    strategy: str
    runtime: str  # "inprocess" | "flower"
    clock: str  # "virtual" | "real"
    lr: float
    cost_model: str | None  # the simulator's cost model; None on the real clock
    clock_fields: dict[str, Any]  # <clock>_time_s, round_time_s, mean_waiting_s, traffic and byte counts
    aggregation: dict[str, Any]  # the strategy's metrics of the round (or why it was skipped)
    devices: dict[str, dict[str, Any]]  # device id -> its entry (:func:`device_entry`), for those that answered
    missing: list[dict[str, Any]] = field(default_factory=list)  # {device, reason, ...} of those that did not
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {device, reason} of updates refused
    accuracy: float | None = None  # on the dev split, where evaluated
    eval_loss: float | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the dev split's other scores (a prompted task's exact match)
    wall_s: float = 0.0  # the server's wall seconds for the round

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "strategy": self.strategy, "runtime": self.runtime, "clock": self.clock,
                "lr": self.lr, "cost_model": self.cost_model, **self.clock_fields, "accuracy": self.accuracy,
                "eval_loss": self.eval_loss, **({"eval_metrics": self.eval_metrics} if self.eval_metrics else {}),
                "aggregation": self.aggregation, "devices": self.devices, "missing": self.missing,
                "rejected": self.rejected, "wall_s": self.wall_s}


class RecordWriter:
    """Appends records to ``<out>/rounds.jsonl`` as they are made (a crash keeps every finished round).

    ``records``: the records of a resumed run's finished rounds; the file is rewritten with exactly those (a
    record written after the last checkpoint, by a run that then crashed, is dropped and made again)."""

    def __init__(self, out_dir: Path, records: list[dict] | None = None) -> None:
        self.path = Path(out_dir) / "rounds.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = list(records or [])
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict) -> None:
        self.records.append(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
