"""The virtual clock: the one place where simulated time and traffic accumulate.

Rounds are synchronous: a round lasts as long as its slowest participating device; every other device waits
``round time - its own completion``. Traffic counts the bytes actually sent, down and up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .cost_model import DeviceTiming


@dataclass
class RoundClock:
    round: int
    round_time_s: float
    mean_waiting_s: float
    downlink_bytes: int
    uplink_bytes: int
    waiting_s: dict[int, float]


@dataclass
class VirtualClock:
    now_s: float = 0.0
    downlink_bytes: int = 0
    uplink_bytes: int = 0
    history: list[RoundClock] = field(default_factory=list)

    @property
    def traffic_bytes(self) -> int:
        return self.downlink_bytes + self.uplink_bytes

    def advance(self, rnd: int, timings: dict[int, DeviceTiming], down: dict[int, int], up: dict[int, int]) -> RoundClock:
        """Close round ``rnd`` given each device's timing and the bytes it received and sent."""
        round_time = max((t.total_s for t in timings.values()), default=0.0)
        waiting = {d: round_time - t.total_s for d, t in timings.items()}
        entry = RoundClock(rnd, round_time, sum(waiting.values()) / len(waiting) if waiting else 0.0,
                           int(sum(down.values())), int(sum(up.values())), waiting)
        self.now_s += round_time
        self.downlink_bytes += entry.downlink_bytes
        self.uplink_bytes += entry.uplink_bytes
        self.history.append(entry)
        return entry

    def record_fields(self, entry: RoundClock) -> dict:
        """The time and traffic fields of a round record, after ``advance`` closed that round."""
        return {"virtual_time_s": self.now_s, "round_time_s": entry.round_time_s, "mean_waiting_s": entry.mean_waiting_s,
                "round_downlink_bytes": entry.downlink_bytes, "round_uplink_bytes": entry.uplink_bytes,
                "traffic_bytes": self.traffic_bytes, "downlink_bytes": self.downlink_bytes, "uplink_bytes": self.uplink_bytes}
