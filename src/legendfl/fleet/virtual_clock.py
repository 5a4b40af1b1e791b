"""The round clock: the one place where a run's time and traffic accumulate.

Rounds are synchronous: a round lasts as long as its slowest participating device; every other device waits
``round time - its own completion``. Traffic counts the bytes actually sent, down and up.

The simulator runs it on virtual seconds (``kind="virtual"``: the cost model's completion times); the
Flower runtime on real seconds (``kind="real"``: round trips, and the round lasts as long as the server
waited, silent nodes included). Records name the clock's time field after its kind (``virtual_time_s`` or
``real_time_s``), so the two are never mixed up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CLOCK_KINDS = ("virtual", "real")


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
    kind: str = "virtual"
    now_s: float = 0.0
    downlink_bytes: int = 0
    uplink_bytes: int = 0
    history: list[RoundClock] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in CLOCK_KINDS:
            raise ValueError(f"clock kind must be one of {list(CLOCK_KINDS)}, got {self.kind!r}")

    @property
    def time_field(self) -> str:
        return f"{self.kind}_time_s"

    @property
    def traffic_bytes(self) -> int:
        return self.downlink_bytes + self.uplink_bytes

    def advance(self, rnd: int, completion_s: dict[int, float], down: dict[int, int], up: dict[int, int],
                round_time_s: float | None = None) -> RoundClock:
        """Close round ``rnd`` given each device's completion seconds and the bytes it received and sent;
        ``round_time_s`` (default: the slowest completion) is how long the round lasted."""
        round_time = max(completion_s.values(), default=0.0) if round_time_s is None else round_time_s
        waiting = {d: round_time - t for d, t in completion_s.items()}
        entry = RoundClock(rnd, round_time, sum(waiting.values()) / len(waiting) if waiting else 0.0,
                           int(sum(down.values())), int(sum(up.values())), waiting)
        self.now_s += round_time
        self.downlink_bytes += entry.downlink_bytes
        self.uplink_bytes += entry.uplink_bytes
        self.history.append(entry)
        return entry

    def record_fields(self, entry: RoundClock) -> dict:
        """The time and traffic fields of a round record, after ``advance`` closed that round."""
        return {self.time_field: self.now_s, "round_time_s": entry.round_time_s, "mean_waiting_s": entry.mean_waiting_s,
                "round_downlink_bytes": entry.downlink_bytes, "round_uplink_bytes": entry.uplink_bytes,
                "traffic_bytes": self.traffic_bytes, "downlink_bytes": self.downlink_bytes, "uplink_bytes": self.uplink_bytes}
