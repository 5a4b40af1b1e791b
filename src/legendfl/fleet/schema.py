"""A fleet file's tables checked before use: every error names the key (``device_types[1].count``) and
what is allowed, instead of a bare ``KeyError``."""
from __future__ import annotations

import math
from typing import Any

TOP = {"name", "description", "kind", "reference_size", "mode_switch_every", "profile", "device_types", "network",
       "availability", "best_phone_gflops", "min_kbps", "scores", "bandwidth", "server"}
DEVICE_TYPE = {"name", "count", "peak", "modes", "availability", "profile"}
NETWORK = {"min_mbps", "max_mbps", "relative_std", "groups"}
GROUP = {"distance_m", "uplink_mbps", "downlink_mbps"}
SERVER = {"name", "gflops", "source"}  # the server that trains the top of a split round (fleet/split_clock.py)


def _number(table: dict, key: str, where: str, *, minimum: float = 0.0, exclusive: bool = True,
            maximum: float | None = None, required: bool = True, integer: bool = False) -> None:
    if key not in table:
        if required:
            raise ValueError(f"{where}.{key} is missing" if where else f"{key} is missing")
        return
    v = table[key]
    name = f"{where}.{key}" if where else key
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise ValueError(f"fleet {name} must be {kind}, got {v!r}")
    if (v <= minimum if exclusive else v < minimum) or (maximum is not None and v > maximum):
        bound = f"{'>' if exclusive else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
        raise ValueError(f"fleet {name} must be {bound}, got {v!r}")


def _table(value: Any, where: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"fleet {where} must be a table, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"fleet {where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return value


def _tables(value: Any, name: str, allowed: set[str], what: str) -> list[tuple[str, dict]]:
    """A non-empty list of tables, each checked by :func:`_table`: (its name, e.g. ``device_types[1]``, table)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"fleet {name} must be a non-empty list of tables ({what})")
    return [(f"{name}[{i}]", _table(t, f"{name}[{i}]", allowed)) for i, t in enumerate(value)]


def check_fleet(cfg: dict) -> None:
    _table(cfg, "file", TOP)
    for key in ("name", "description"):
        if not isinstance(cfg.get(key, ""), str):
            raise ValueError(f"fleet {key} must be a string, got {cfg[key]!r}")
    _number(cfg, "reference_size", "", required=False, integer=True)
    _number(cfg, "mode_switch_every", "", exclusive=False, required=False, integer=True)
    _number(cfg, "availability", "", maximum=1.0, required=False)  # 0: no device would ever be online
    if "server" in cfg:
        server = _table(cfg["server"], "server", SERVER)
        if not isinstance(server.get("name", ""), str):
            raise ValueError(f"fleet server.name must be a string, got {server['name']!r}")
        _number(server, "gflops", "server")
    if cfg.get("kind", "types") not in ("types", "traces"):
        raise ValueError(f"fleet kind must be one of ['types', 'traces'], got {cfg['kind']!r}")
    if cfg.get("kind") == "traces":
        for key in ("scores", "bandwidth"):
            if not isinstance(cfg.get(key), str) or not cfg[key]:
                raise ValueError(f"fleet {key} must name a trace file, got {cfg.get(key)!r}")
        _number(cfg, "best_phone_gflops", "")
        _number(cfg, "min_kbps", "", required=False)
        return
    for where, t in _tables(cfg.get("device_types"), "device_types", DEVICE_TYPE,
                            "[[device_types]] with name, count, modes"):
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise ValueError(f"fleet {where}.name must be a non-empty string, got {t.get('name')!r}")
        _number(t, "count", where, integer=True)
        _number(t, "availability", where, maximum=1.0, required=False)
        modes = t.get("modes")
        if (not isinstance(modes, list) or not modes
                or any(isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < math.inf for m in modes)):
            raise ValueError(f"fleet {where}.modes must be a non-empty list of throughputs > 0 (GFLOP/s), got {modes!r}")
    net = _table(cfg.get("network"), "network", NETWORK)
    for key in ("min_mbps", "max_mbps"):
        _number(net, key, "network", required=False)
    if net.get("min_mbps", 1.0) > net.get("max_mbps", 30.0):
        raise ValueError(f"fleet network.min_mbps ({net.get('min_mbps', 1.0)}) must not exceed network.max_mbps "
                         f"({net.get('max_mbps', 30.0)})")
    _number(net, "relative_std", "network", exclusive=False, required=False)
    for where, g in _tables(net.get("groups"), "network.groups", GROUP, "distance_m, uplink_mbps, downlink_mbps"):
        _number(g, "uplink_mbps", where)
        _number(g, "downlink_mbps", where)
        _number(g, "distance_m", where, exclusive=False, required=False)
