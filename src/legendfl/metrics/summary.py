"""Run summaries from per-round records: time and traffic to a target accuracy, waiting time."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable


def read_records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def first_reaching(records: Iterable[dict], target: float) -> dict | None:
    """The first evaluated round whose accuracy is >= target (numbers, never strings)."""
    for rec in records:
        acc = rec.get("accuracy")
        if acc is not None and float(acc) >= float(target):
            return rec
    return None


def summarize(records: list[dict], target: float | None = None) -> dict:
    evaluated = [r for r in records if r.get("accuracy") is not None]
    out: dict = {
        "rounds": len(records),
        "final_accuracy": evaluated[-1]["accuracy"] if evaluated else None,
        "best_accuracy": max((r["accuracy"] for r in evaluated), default=None),
        "virtual_time_s": records[-1]["virtual_time_s"] if records else 0.0,
        "traffic_bytes": records[-1]["traffic_bytes"] if records else 0,
        "mean_waiting_s": (sum(r["mean_waiting_s"] for r in records) / len(records)) if records else 0.0,
        "mean_round_time_s": (sum(r["round_time_s"] for r in records) / len(records)) if records else 0.0,
    }
    if target is None and out["final_accuracy"] is not None:
        target = out["final_accuracy"]
    out["target_accuracy"] = target
    hit = first_reaching(evaluated, target) if target is not None else None
    out["time_to_target_s"] = hit["virtual_time_s"] if hit else None
    out["traffic_to_target_bytes"] = hit["traffic_bytes"] if hit else None
    out["round_to_target"] = hit["round"] if hit else None
    if hit:
        upto = [r for r in records if r["round"] <= hit["round"]]
        out["mean_waiting_to_target_s"] = sum(r["mean_waiting_s"] for r in upto) / len(upto)
    return out
