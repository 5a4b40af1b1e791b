"""``legendfl retime``: a finished run's folder re-timed under another cost model or fleet, no training.

Reads ``config.json`` and ``rounds.jsonl``, prices every device's recorded work again (``fleet.retime``)
and writes ``rounds.jsonl``, ``config.json`` (with the new cost model and fleet, and ``retimed_from``) and
``summary.json`` into the output folder. Accuracy and every decision stay those of the original run: exact
for strategies whose decisions do not read device timings; for the others (LEGEND with adaptive depth,
HetLoRA) the summary says so and the numbers are those decisions re-priced, not a re-run.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import RunConfig
from .fleet.devices import load_fleet
from .fleet.retime import retime_records
from .metrics.summary import read_records, summarize


def decisions_use_time(cfg: RunConfig) -> bool:
    from .strategies import build_strategy

    return bool(build_strategy(cfg).decisions_use_time)


def retime_run(source: Path, out: Path, cost_model: str, fleet: str | None = None) -> dict:
    """Re-time the run in ``source`` into ``out``; returns the new summary."""
    source, out = Path(source), Path(out)
    for name in ("config.json", "rounds.jsonl"):
        if not (source / name).exists():
            raise ValueError(f"{source} is not a run folder: {name} is missing")
    values = json.loads((source / "config.json").read_text())
    values = {k: v for k, v in values.items() if k in RunConfig.__dataclass_fields__}
    cfg = RunConfig(**{**values, "cost_model": cost_model, "fleet": fleet or values.get("fleet", "jetson"),
                       "out_dir": str(out)})
    records = retime_records(read_records(source / "rounds.jsonl"), load_fleet(cfg.fleet, cfg.num_devices, cfg.seed),
                             cost_model)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "rounds.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    (out / "config.json").write_text(json.dumps({**cfg.to_json(), "retimed_from": str(source)}, indent=2))
    uses_time = decisions_use_time(cfg)
    summary = {**summarize(records, cfg.target_accuracy), "strategy": records[0]["strategy"] if records else cfg.strategy,
               "task": cfg.task, "model": cfg.model, "fleet": cfg.fleet, "num_devices": cfg.num_devices,
               "cost_model": cost_model, "retimed_from": str(source), "decisions_use_time": uses_time,
               "note": ("decisions were made under the original run's timings; re-run for a faithful result"
                        if uses_time else "exact: this strategy's decisions do not read device timings")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
