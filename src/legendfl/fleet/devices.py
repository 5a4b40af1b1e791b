"""Fleet definitions (TOML files under ``fleets/``) loaded into devices, and their state in each round.

A device's round state (power mode, uplink and downlink bandwidth) is a pure function of
(seed, round, device): the same seed gives the same fleet trace in every runtime and on a resume, and every
strategy compared on the same seed sees the same modes and bandwidth draws in the same round.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.plugins import load_plugins
from ..core.seeding import rng
from .profiles import LatencyProfile
from .schema import check_fleet

FLEETS = Path(__file__).parent / "fleets"
TRACES = Path(__file__).parent / "traces"
BUILTIN_FLEETS = ("jetson", "phones")


@dataclass(frozen=True)
class Device:
    """One simulated device: its compute modes and its network profile."""

    device_id: int
    kind: str
    modes_gflops: tuple[float, ...]  # effective fine-tuning throughput of each mode
    uplink_mbps: float  # mean
    downlink_mbps: float  # mean
    uplink_std_mbps: float
    downlink_std_mbps: float
    group: str = ""
    profile: LatencyProfile | None = None  # measured latency profile (the ``profile`` cost model)
    availability: float = 1.0  # probability of being online in a round (``fleet/availability.py``)


@dataclass(frozen=True)
class DeviceRoundState:
    """A device's conditions in one round."""

    device_id: int
    round: int
    mode: int
    gflops: float
    uplink_mbps: float
    downlink_mbps: float
    profile: LatencyProfile | None = None


@dataclass
class Fleet:
    name: str
    description: str
    devices: list[Device]
    seed: int
    mode_switch_every: int = 20
    min_mbps: float = 0.1
    max_mbps: float = 1e9
    server: dict | None = None  # the fleet file's [server] table: name, gflops, source (split rounds' server)

    def __len__(self) -> int:
        return len(self.devices)

    def state(self, device_id: int, rnd: int) -> DeviceRoundState:
        """Mode (re-drawn every ``mode_switch_every`` rounds) and bandwidth (drawn every round)."""
        dev = self.devices[device_id]
        period = (rnd - 1) // self.mode_switch_every if self.mode_switch_every else 0
        if len(dev.modes_gflops) > 1:
            mode = int(rng(self.seed, "fleet", 1, period, device_id).integers(len(dev.modes_gflops)))
        else:
            mode = 0
        gen = rng(self.seed, "fleet", 2, rnd, device_id)
        up = float(np.clip(gen.normal(dev.uplink_mbps, dev.uplink_std_mbps), self.min_mbps, self.max_mbps))
        down = float(np.clip(gen.normal(dev.downlink_mbps, dev.downlink_std_mbps), self.min_mbps, self.max_mbps))
        return DeviceRoundState(device_id, rnd, mode, dev.modes_gflops[mode], up, down, dev.profile)


    def server_state(self, rnd: int, device_id: int) -> DeviceRoundState:
        """The server of a split round (``fleet/split_clock.py``): its throughput from the fleet file's
        ``[server]`` table, priced with the fleet's profile; its links are never charged (each transfer is charged
        on the device's side)."""
        if self.server is None:
            raise ValueError(f"fleet {self.name!r} has no [server] table (name, gflops, source): a split round's clock "
                             f"prices the server's compute from it")
        profile = next((d.profile for d in self.devices if d.profile is not None), None)
        return DeviceRoundState(device_id, rnd, 0, float(self.server["gflops"]), float("inf"), float("inf"), profile)


def _scaled_counts(counts: list[int], size: int) -> list[int]:
    """Largest-remainder scaling of a mix to ``size`` devices (each type keeps >= 1 when size allows)."""
    total = sum(counts)
    raw = [c * size / total for c in counts]
    out = [int(np.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[: size - sum(out)]:
        out[i] += 1
    if size >= len(counts):
        for i in range(len(out)):
            while out[i] == 0:
                j = max(range(len(out)), key=lambda j: out[j])
                out[j] -= 1
                out[i] += 1
    return out


def _fleet_profile(cfg: dict) -> LatencyProfile | None:
    """The fleet's ``[profile]`` (every device type without its own), else none."""
    return LatencyProfile.from_table(cfg["profile"], "profile") if "profile" in cfg else None


def _load_jetson_like(cfg: dict, size: int, seed: int) -> list[Device]:
    types = cfg["device_types"]
    shared = _fleet_profile(cfg)
    profiles = [LatencyProfile.from_table(t["profile"], f"device_types[{i}].profile") if "profile" in t else shared
                for i, t in enumerate(types)]
    counts = _scaled_counts([t["count"] for t in types], size)
    kinds: list[int] = [i for i, c in enumerate(counts) for _ in range(c)]
    net = cfg["network"]
    groups = net["groups"]
    order = rng(seed, "fleet", 0).permutation(size)  # shuffle devices into equal distance groups
    group_of = {int(dev): g for g, chunk in enumerate(np.array_split(order, len(groups))) for dev in chunk}
    rel = float(net.get("relative_std", 0.3))
    devices = []
    for i, k in enumerate(kinds):
        t, g = types[k], groups[group_of[i]]
        devices.append(Device(i, t["name"], tuple(float(m) for m in t["modes"]), g["uplink_mbps"], g["downlink_mbps"],
                              rel * g["uplink_mbps"], rel * g["downlink_mbps"], f"{g['distance_m']}m", profiles[k],
                              float(t.get("availability", 1.0))))
    return devices


def _load_traces(cfg: dict, size: int, seed: int) -> list[Device]:
    for key in ("scores", "bandwidth"):
        if not (TRACES / cfg[key]).is_file():
            known = sorted(p.name for p in TRACES.glob("*.json"))
            raise ValueError(f"fleet {key} must name a trace file shipped in fleet/traces ({known}), got {cfg[key]!r}")
    scores = json.loads((TRACES / cfg["scores"]).read_text())
    users = list(json.loads((TRACES / cfg["bandwidth"]).read_text()).values())
    names = sorted(scores)
    best = max(scores.values())
    gen = rng(seed, "fleet", 0)
    kbps_to_mbps = 8.0 / 1000.0
    profile = _fleet_profile(cfg)
    devices = []
    for i in range(size):
        phone = names[int(gen.integers(len(names)))]
        user = users[int(gen.integers(len(users)))]
        devices.append(Device(i, phone, (scores[phone] / best * float(cfg["best_phone_gflops"]),),
                              user["up_u"] * kbps_to_mbps, user["down_u"] * kbps_to_mbps,
                              user["up_sigma"] * kbps_to_mbps, user["down_sigma"] * kbps_to_mbps, "trace", profile,
                              float(cfg.get("availability", 1.0))))
    return devices


_REGISTERED: dict[str, Path] = {}  # fleets that plugins registered by name


def register_fleet(name: str, path: str | Path) -> None:
    """Make ``--fleet name`` load the fleet file ``path`` (for plugins; core/plugins.py)."""
    if name in BUILTIN_FLEETS:
        raise ValueError(f"fleet name {name!r} is built in; choose another")
    _REGISTERED[name] = Path(path)


def fleet_names() -> list[str]:
    return [*BUILTIN_FLEETS, *sorted(_REGISTERED)]


MAX_FLEET_SIZE = 100_000  # a simulated fleet keeps every device's state in memory


def load_fleet(name_or_path: str = "jetson", size: int | None = None, seed: int = 0) -> Fleet:
    """A built-in fleet (``jetson``, ``phones``) or a TOML file, scaled to ``size`` devices keeping the mix."""
    if name_or_path not in BUILTIN_FLEETS and name_or_path not in _REGISTERED and not Path(name_or_path).is_file():
        load_plugins()  # a plugin's fleet (core/plugins.py)
    path = (FLEETS / f"{name_or_path}.toml" if name_or_path in BUILTIN_FLEETS
            else _REGISTERED.get(name_or_path, Path(name_or_path)))
    if not path.is_file():
        raise ValueError(f"fleet must be one of {fleet_names()} or a TOML file; got {name_or_path!r}")
    try:
        cfg = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"fleet file {str(path)!r} is not readable TOML: {err}") from None
    try:
        check_fleet(cfg)
    except ValueError as err:
        raise ValueError(f"{err} (fleet file {str(path)!r})") from None
    size = int(cfg.get("reference_size", 80)) if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_FLEET_SIZE:
        raise ValueError(f"num_devices must be an integer from 1 to {MAX_FLEET_SIZE:,}, got {size}")
    if cfg.get("kind") == "traces":
        devices = _load_traces(cfg, size, seed)
        return Fleet(cfg["name"], cfg["description"], devices, seed, mode_switch_every=0,
                     min_mbps=float(cfg.get("min_kbps", 16)) * 8 / 1000, server=cfg.get("server"))
    devices = _load_jetson_like(cfg, size, seed)
    net = cfg["network"]
    return Fleet(cfg["name"], cfg["description"], devices, seed, int(cfg.get("mode_switch_every", 20)),
                 float(net.get("min_mbps", 1.0)), float(net.get("max_mbps", 30.0)), cfg.get("server"))
