"""Which devices are online in a round: a probability per device type, or a trace the user supplies.

- **Probability**: a device type in a fleet file may say ``availability = 0.7`` (the chance it is online in
  any round; default 1.0); ``--availability P`` sets it for every device. Whether device d is online in
  round r is drawn from (seed, "availability", r, d): the same in every runtime, order and resume.
- **Trace** (``--availability-trace FILE``): a JSON object mapping a device id to its online flags by round,
  ``{"0": [1, 1, 0, 1], "1": [0, 1, 1, 1], ...}`` (1 or true = online); a run longer than a device's list
  repeats it. Devices the file does not name are always online. FedScale publishes real device availability
  traces (time intervals per client); turning one into this per-round form is one line per device of your
  round length, not shipped here.

A device that is offline gets no task; the record lists it under ``missing`` with the reason.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..core.seeding import rng
from .devices import Fleet


def load_trace(path: str, num_devices: int) -> dict[int, list[bool]]:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"availability_trace {path!r} does not exist")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"availability_trace {path!r} must be a JSON object of device id -> list of 0/1 by round: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"availability_trace {path!r} must be a JSON object of device id -> list of 0/1 by round")
    out: dict[int, list[bool]] = {}
    for key, flags in data.items():
        if not str(key).isdigit() or not 0 <= int(key) < num_devices:
            raise ValueError(f"availability_trace {path!r}: device ids must be integers in [0, {num_devices - 1}], got {key!r}")
        if not isinstance(flags, list) or not flags or any(f not in (0, 1, True, False) or isinstance(f, float) for f in flags):
            raise ValueError(f"availability_trace {path!r}: device {key} must map to a non-empty list of 0/1, got {str(flags)[:40]}")
        out[int(key)] = [bool(f) for f in flags]
    return out


class Availability:
    """``online(device, round)`` for a fleet, from its devices' probabilities, an override, or a trace."""

    def __init__(self, fleet: Fleet, seed: int, probability: float | None = None, trace: dict[int, list[bool]] | None = None):
        if probability is not None and not (isinstance(probability, (int, float)) and 0.0 <= probability <= 1.0
                                            and not math.isnan(probability)):
            raise ValueError(f"availability must be in [0, 1], got {probability!r}")
        self.probability = [probability if probability is not None else d.availability for d in fleet.devices]
        self.trace = trace or {}
        self.seed = seed

    def online(self, device: int, rnd: int) -> bool:
        if device in self.trace:
            flags = self.trace[device]
            return flags[(rnd - 1) % len(flags)]
        p = self.probability[device]
        return p >= 1.0 or float(rng(self.seed, "availability", rnd, device).random()) < p

    def why_offline(self, device: int) -> str:
        if device in self.trace:
            return "offline (availability trace)"
        return f"offline (available with probability {self.probability[device]:g})"


def run_availability(cfg, fleet: Fleet) -> Availability:
    """The availability of a run's fleet from its options (``availability``, ``availability_trace``)."""
    trace = load_trace(cfg.availability_trace, len(fleet)) if cfg.availability_trace else None
    return Availability(fleet, cfg.train.seed, cfg.availability, trace)
