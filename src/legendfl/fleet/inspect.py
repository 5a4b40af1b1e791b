"""``legendfl fleet``: what a fleet file describes (mix, modes, compute spread, bandwidth percentiles)."""
from __future__ import annotations

from collections import Counter

import numpy as np

from .devices import load_fleet


def describe_fleet(name: str, size: int | None, seed: int, rounds: int = 100) -> str:
    fleet = load_fleet(name, size, seed)
    lines = [f"fleet {fleet.name}: {fleet.description}", f"devices: {len(fleet)} (seed {seed})"]
    mix = Counter(d.kind for d in fleet.devices)
    if len(mix) <= 12:
        for kind, count in mix.items():
            modes = next(d.modes_gflops for d in fleet.devices if d.kind == kind)
            online = next(d.availability for d in fleet.devices if d.kind == kind)
            lines.append(f"  {kind:<12} x{count:<3} modes (GFLOP/s): " + ", ".join(f"{m:g}" for m in modes)
                         + f"; online in a round with probability {online:g}")
    else:
        lines.append(f"  {len(mix)} distinct device models")
    lines.append(f"availability: {np.mean([d.availability for d in fleet.devices]):.2f} on average "
                 f"(a device's chance to be online in a round; --availability overrides it)")
    all_modes = [m for d in fleet.devices for m in d.modes_gflops]
    lines.append(f"compute: fastest mode {max(all_modes):g} GFLOP/s, slowest {min(all_modes):g} GFLOP/s, "
                 f"ratio {max(all_modes) / min(all_modes):.1f}x")
    profiles = {d.kind: d.profile for d in fleet.devices if d.profile is not None}
    if profiles:
        for p in dict.fromkeys(profiles.values()):
            kinds = ", ".join(k for k, q in profiles.items() if q == p)
            lines.append(f"latency profile ({kinds}; the default cost model): forward {p.forward_ms_per_layer:g} ms per layer, "
                         f"backward {p.backward_ms_per_trained_layer:g} ms per trained layer, {p.backward_ms_per_frozen_layer:g} ms "
                         f"per traversed frozen layer, {p.step_ms:g} ms per step, at {p.reference_gflops:g} GFLOP/s; "
                         f"source: {p.source or 'not given'}")
        missing = sorted({d.kind for d in fleet.devices if d.profile is None})
        if missing:
            lines.append(f"no latency profile (timed by FLOPs): {', '.join(missing[:6])}")
    else:
        lines.append("no latency profile: compute is timed by FLOPs / mode throughput (cost model 'flops')")
    if fleet.mode_switch_every:
        lines.append(f"modes: every device switches to a random mode every {fleet.mode_switch_every} rounds")
    groups = Counter(d.group for d in fleet.devices)
    lines.append("network groups: " + ", ".join(f"{g}: {c}" for g, c in sorted(groups.items())))
    states = [fleet.state(d, r) for r in range(1, rounds + 1) for d in range(len(fleet))]
    for label, values in (("uplink", [s.uplink_mbps for s in states]), ("downlink", [s.downlink_mbps for s in states])):
        p = np.percentile(values, [5, 25, 50, 75, 95])
        lines.append(f"{label} Mb/s over {rounds} rounds: p5 {p[0]:.2f}, p25 {p[1]:.2f}, median {p[2]:.2f}, "
                     f"p75 {p[3]:.2f}, p95 {p[4]:.2f}")
    return "\n".join(lines)
