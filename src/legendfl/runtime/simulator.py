"""The in-process simulator's transport: the round's devices train on one shared frozen backbone.

With the batched engine (``--engine batched``, the default) the LoRA devices of a round train together, step
by step, through one pass of the shared model (``engine.batched_training``); otherwise, and for the other
client methods, a device's method injects its modules into the shared model and removes them again (never a
model copy per device). Either way each device's result is its own, and the fleet's cost model turns the
work each device really did into time; the virtual clock closes the round. Devices report the timing they
would measure (``report_noise`` adds noise to it).

Devices that are offline in a round (``fleet/availability.py``) get no task. With a round deadline
(``round_deadline`` seconds, or ``round_deadline_median`` times the median completion of the round's
devices), a device that would finish later is dropped from the round's results (recorded as missing, late);
its download and upload still count as traffic, and the round then lasts until the deadline.
"""
from __future__ import annotations

import statistics

from ..core.strategy import DeviceTask
from ..fleet.availability import Availability, run_availability
from ..fleet.cost_model import device_timing, measured_timing, state_fields
from ..fleet.devices import Fleet
from ..fleet.virtual_clock import VirtualClock
from .context import RunContext
from .loop import ClockState, RoundOutcome
from .progress import RoundProgress


class SimulatorTransport(ClockState):
    runtime = "inprocess"
    clock_kind = "virtual"

    def __init__(self, ctx: RunContext, fleet: Fleet, availability: Availability | None = None) -> None:
        if len(ctx.partitions) != len(fleet):
            raise ValueError(f"{len(ctx.partitions)} partitions for {len(fleet)} devices")
        self.ctx, self.fleet = ctx, fleet
        self.clock = VirtualClock("virtual")
        self.availability = availability or run_availability(ctx.cfg, fleet)
        self.offline: dict[int, str] = {}

    def participants(self, rnd: int) -> list[int]:
        online = [d for d in range(len(self.fleet)) if self.availability.online(d, rnd)]
        self.offline = {d: self.availability.why_offline(d) for d in range(len(self.fleet)) if d not in online}
        return online

    def partition_size(self, device_id: int) -> int:
        return len(self.ctx.partitions[device_id])

    def deadline(self, completion: dict[int, float]) -> float | None:
        cfg = self.ctx.cfg
        if cfg.round_deadline is not None:
            return cfg.round_deadline
        if cfg.round_deadline_median is not None and completion:
            return cfg.round_deadline_median * float(statistics.median(completion.values()))
        return None

    def run_round(self, rnd: int, tasks: dict[int, DeviceTask]) -> RoundOutcome:
        cfg = self.ctx.cfg
        results, timings, extras = [], {}, {}
        bar = RoundProgress(f"round {rnd}", len(tasks))
        trained = self.ctx.train_tasks(tasks, self.ctx.partitions, lambda result: bar.advance(result.num_tokens))
        bar.close()
        for dev in sorted(tasks):
            result = trained[dev]
            state = self.fleet.state(dev, rnd)
            timing = device_timing(state, result.work, cfg.cost_model)
            result.timing = measured_timing(state, timing, noise=cfg.report_noise, seed=cfg.seed)
            results.append(result)
            timings[dev] = timing.to_json()
            extras[dev] = state_fields(self.fleet.devices[dev].kind, state, cfg.cost_model)
        down = {r.device_id: r.work.download_bytes for r in results}  # late devices' traffic counts too
        up = {r.device_id: r.work.upload_bytes for r in results}
        completion = {d: t["total_s"] for d, t in timings.items()}
        missing = dict(self.offline)
        deadline = self.deadline(completion)
        if deadline is not None:
            late = {d for d, t in completion.items() if t > deadline}
            for d in late:
                missing[d] = f"late: {completion[d]:.2f} s > deadline {deadline:.2f} s"
            results = [r for r in results if r.device_id not in late]
            completion = {d: t for d, t in completion.items() if d not in late}
        round_time = deadline if deadline is not None and len(completion) < len(timings) else None
        entry = self.clock.advance(rnd, completion, down, up, round_time_s=round_time)
        return RoundOutcome(results, {d: timings[d] for d in completion}, entry.waiting_s, self.clock.record_fields(entry),
                            extras, missing)
