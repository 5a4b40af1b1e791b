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

A split round (``core.split``: the tasks include the server's) trains every device together with the server,
iteration by iteration, and ``fleet/split_clock.py`` times it from each iteration's work; the server's compute
is priced from the fleet file's ``[server]``.
"""
from __future__ import annotations

import statistics

from ..core.split import SERVER_ID
from ..core.strategy import DeviceTask
from ..core.work import DeviceWork
from ..fleet.availability import Availability, run_availability
from ..fleet.cost_model import device_timing, measured_timing, state_fields
from ..fleet.devices import Fleet
from ..fleet.split_clock import split_round_timing
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
        if SERVER_ID in tasks:
            return self.run_split_round(rnd, tasks)
        cfg = self.ctx.cfg
        results, timings, extras = [], {}, {}
        bar = RoundProgress(f"round {rnd}", len(tasks))
        trained = self.ctx.train_tasks(tasks, self.ctx.partitions, lambda result: bar.advance(result.num_tokens))
        bar.close()
        for dev in sorted(tasks):
            result = trained[dev]
            state = self.fleet.state(dev, rnd)
            timing = device_timing(state, result.work, cfg.cost_model)
            result.timing = measured_timing(state, timing, noise=cfg.report_noise, seed=cfg.train.seed)
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

    def run_split_round(self, rnd: int, tasks: dict[int, DeviceTask]) -> RoundOutcome:
        """A split round: trained together, timed iteration by iteration (``fleet/split_clock.py``)."""
        cfg = self.ctx.cfg
        if cfg.round_deadline is not None or cfg.round_deadline_median is not None:
            raise ValueError("round_deadline and round_deadline_median must be unset for a split strategy: its devices "
                             "and server wait for each other in every iteration, so no device can be dropped mid-round")
        bar = RoundProgress(f"round {rnd}", len(tasks) - 1)
        trained = self.ctx.train_tasks(tasks, self.ctx.partitions, lambda result: bar.advance(result.num_tokens))
        bar.close()
        server = trained.pop(SERVER_ID)
        states = {d: self.fleet.state(d, rnd) for d in trained}
        models = {d: DeviceWork(forward_flops=0.0, backward_flops=0.0, download_bytes=r.work.lora_download_bytes,
                                upload_bytes=r.work.lora_upload_bytes) for d, r in trained.items()}
        timing = split_round_timing(states, {d: r.iterations for d, r in trained.items()}, models,
                                    self.fleet.server_state(rnd, SERVER_ID), server.iterations, cfg.cost_model)
        for d, r in trained.items():
            r.timing = measured_timing(states[d], timing.devices[d], noise=cfg.report_noise, seed=cfg.train.seed)
        completion = {d: t.total_s for d, t in timing.devices.items()}
        entry = self.clock.advance(rnd, completion, {d: r.work.download_bytes for d, r in trained.items()},
                                   {d: r.work.upload_bytes for d, r in trained.items()}, round_time_s=timing.round_time_s)
        server.metrics.update({"server_compute_s": round(timing.server_compute_s, 4),
                               "iteration_s": [round(t, 4) for t in timing.iteration_s]})
        extras = {d: state_fields(self.fleet.devices[d].kind, states[d], cfg.cost_model) for d in trained}
        return RoundOutcome(list(trained.values()), {d: t.to_json() for d, t in timing.devices.items()}, entry.waiting_s,
                            self.clock.record_fields(entry), extras, dict(self.offline), server=server)
