"""Re-timing a finished run under another cost model or fleet, from its records alone (no training).

Every round record holds each device's work (``DeviceWork``: FLOPs, the per-layer parts a latency profile
prices, steps, depth, rank sum, bytes). Re-timing prices that work again with the chosen cost model and
the device's state in that round (a pure function of fleet, seed, round and device), closes each round
on a fresh virtual clock, and rewrites the time, waiting and traffic fields; accuracy and every decision
stay as they were.

That is exact for strategies whose decisions do not read device timings (FedLoRA, LEGEND without
adaptive depth, FedAdapter with round-counted windows, full fine-tuning). LEGEND (its depths), its
adaptive-depth ablations and HetLoRA (its ranks) decide from reported times: re-timing them keeps the
decisions they made under the original model, so for a faithful result they must be re-run
(``Strategy.decisions_use_time``).
"""
from __future__ import annotations

from .cost_model import DeviceWork, device_timing, timed_by
from .devices import Fleet
from .virtual_clock import VirtualClock

TIMING_FIELDS = ("download_s", "forward_s", "backward_s", "upload_s", "total_s")


def retime_records(records: list[dict], fleet: Fleet, cost_model: str) -> list[dict]:
    """The same rounds timed by ``cost_model`` on ``fleet``; raises if a record lacks per-device work."""
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
        entry = clock.advance(rec["round"], timings, down, up)
        devices = {}
        for d, old in rec["devices"].items():
            dev = int(d)
            s = states[dev]
            devices[d] = {**old, "mode": s.mode, "gflops": s.gflops, "uplink_mbps": round(s.uplink_mbps, 3),
                          "downlink_mbps": round(s.downlink_mbps, 3), "timed_by": timed_by(s, cost_model),
                          **{k: round(v, 4) for k, v in timings[dev].to_json().items()},
                          "waiting_s": round(entry.waiting_s[dev], 4)}
        out.append({**rec, "cost_model": cost_model, **clock.record_fields(entry), "devices": devices, "retimed": True})
    return out
