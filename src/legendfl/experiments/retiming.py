"""``legendfl retime``: a finished run's folder re-timed under another cost model or fleet, no training.

Reads ``config.json`` and ``rounds.jsonl``, prices every device's recorded work again (:func:`retime_records`)
and writes ``rounds.jsonl``, ``config.json`` (with the new cost model and fleet, and ``retimed_from``), the input
fingerprint and ``summary.json`` into the output folder, locked and written as a run's folder is
(``runtime.run_folder.RunFolder``, ``metrics.records.RecordWriter``). Accuracy and every decision stay those of the original run: exact
for strategies whose decisions do not read device timings; for the others (LEGEND with adaptive depth,
HetLoRA) the summary says so and the numbers are those decisions re-priced, not a re-run.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import RunConfig, accepted_keys
from ..core.files import write_atomic
from ..core.work import DeviceWork
from ..fleet.cost_model import device_timing, state_fields
from ..fleet.devices import Fleet, load_fleet
from ..fleet.virtual_clock import VirtualClock
from ..metrics.records import RecordWriter, timing_fields
from ..metrics.summary import read_records, summarize
from ..runtime.run_folder import RunFolder, input_fingerprint, recorded_inputs


def retime_records(records: list[dict], fleet: Fleet, cost_model: str) -> list[dict]:
    """The same rounds timed by ``cost_model`` on ``fleet``; raises if a record lacks per-device work.

    Every round record holds each device's work (``DeviceWork``); it is priced again with the device's state
    in that round (a pure function of fleet, seed, round and device), each round is closed on a fresh virtual
    clock, and the time, waiting and traffic fields are rewritten; accuracy and every decision stay as they
    were. Exact for strategies whose decisions do not read device timings (``Strategy.decisions_use_time``).
    """
    clock = VirtualClock()
    out = []
    for rec in records:
        timings, down, up, states = {}, {}, {}, {}
        for d, entry in rec["devices"].items():
            if "work" not in entry:
                raise ValueError(f"round {rec['round']}: device {d} has no recorded work; records written before "
                                 f"per-device work was recorded cannot be re-timed (re-run it)")
            work = DeviceWork(**entry["work"])
            dev = int(d)
            if dev >= len(fleet):
                raise ValueError(f"fleet has {len(fleet)} devices; the run has device {dev}")
            states[dev] = fleet.state(dev, rec["round"])
            timings[dev] = device_timing(states[dev], work, cost_model)
            down[dev], up[dev] = work.download_bytes, work.upload_bytes
        entry = clock.advance(rec["round"], {d: t.total_s for d, t in timings.items()}, down, up)
        devices = {d: {**old, **state_fields(fleet.devices[int(d)].kind, states[int(d)], cost_model),
                       **timing_fields(timings[int(d)].to_json(), entry.waiting_s[int(d)])}
                   for d, old in rec["devices"].items()}
        out.append({**rec, "cost_model": cost_model, **clock.record_fields(entry), "devices": devices, "retimed": True})
    return out


def decisions_use_time(cfg: RunConfig) -> bool:
    """Whether the run's outcome depends on device timings: the strategy reads them, or a round deadline drops the
    devices that finish late (under another cost model, other devices would be late). Availability does not: an
    offline device got no task under any cost model."""
    deadline = cfg.round_deadline is not None or cfg.round_deadline_median is not None
    return deadline or bool(cfg.build_strategy().decisions_use_time)


def run_config_values(source: Path) -> dict:
    """The run options in a run folder's ``config.json`` (keys of earlier versions' flat files included; entries
    that are not options, such as ``retimed_from``, left out)."""
    try:
        values = json.loads((Path(source) / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{Path(source) / 'config.json'} is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{Path(source) / 'config.json'} must hold a JSON object of run options")
    known = accepted_keys()
    return {k: v for k, v in values.items() if k in known}


def retime_run(source: Path, out: Path, cost_model: str, fleet: str | None = None, overwrite: bool = False) -> dict:
    """Re-time the run in ``source`` into ``out``; returns the new summary. Refuses an ``out`` that is the
    source (it would replace the run's own records) or that holds files (unless ``overwrite``), and a run
    without rounds."""
    source, out = Path(source), Path(out)
    for name in ("config.json", "rounds.jsonl"):
        if not (source / name).exists():
            raise ValueError(f"{source} is not a run folder: {name} is missing")
    if out.resolve() == source.resolve():
        raise ValueError(f"--out must not be the run folder itself ({source}): re-timing would replace its records")
    with RunFolder(out) as folder:  # locked as a run's folder is; written by the writers every run uses
        if folder.holds_outputs() and not overwrite:
            raise ValueError(f"--out {out} already holds files; choose an empty folder or pass --overwrite")
        source_records = read_records(source / "rounds.jsonl")
        if not source_records:
            raise ValueError(f"{source / 'rounds.jsonl'} holds no rounds: nothing to re-time")
        values = run_config_values(source)
        cfg = RunConfig.from_sources(values, {"cost_model": cost_model, "fleet": fleet or values.get("fleet", "jetson"),
                                              "out_dir": str(out)})
        records = retime_records(source_records, load_fleet(cfg.fleet, cfg.num_devices, cfg.train.seed),
                                 cost_model)
        inputs = dict(recorded_inputs(source) or {})  # the source run's input files; the fleet's is the one now used
        inputs.pop("fleet", None)
        inputs.update({k: v for k, v in input_fingerprint(cfg.to_json()).items() if k == "fleet"})
        uses_time = decisions_use_time(cfg)
        summary = {**summarize(records, cfg.target_accuracy), "strategy": records[0]["strategy"],
                   "task": cfg.task, "model": cfg.model, "fleet": cfg.fleet, "num_devices": cfg.num_devices,
                   "cost_model": cost_model, "retimed_from": str(source), "decisions_use_time": uses_time,
                   "note": ("decisions were made under the original run's timings; re-run for a faithful result"
                            if uses_time else "exact: this strategy's decisions do not read device timings")}
        folder.clear()
        folder.write_start({**cfg.to_json(), "retimed_from": str(source)}, inputs)
        RecordWriter(out, records)
        write_atomic(out / "summary.json", json.dumps(summary, indent=2))
        return summary
