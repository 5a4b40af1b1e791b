"""The clock of a split round (``core.split``): devices and server wait for each other in every iteration.

Each device first downloads its bottom LoRA. In iteration k the server can start once every device has run
its bottom forward and sent its features; each device can start iteration k + 1 once it has received its
gradient and run its backward:

    arrive_ik = ready_ik + forward_ik + feature upload_ik
    server_k  = max_i arrive_ik + top forward and backward_k (the server's compute)
    ready_i,k+1 = server_k + gradient download_ik + backward_ik           (ready_i1 = model download_i)
    finish_i  = ready_i,K+1 + model upload_i,            round time = max_i finish_i

With equal iterations on every device this is K x (max_i (forward + upload) + server + max_i (download +
backward)) plus the model transfers, the issue's formula; the event form also holds when iterations differ in
padded width. A device's own time (its phases, summed) is what it reports; the rest of the round it waits.
Every phase is priced by the cost model (``fleet/cost_model.py``) from the work the device really did in that
iteration; the server's compute by the same model on the server's state (its throughput and profile), its
links are not charged (each transfer is charged once, on the device's side).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.work import DeviceTiming, DeviceWork
from .cost_model import device_timing
from .devices import DeviceRoundState


@dataclass(frozen=True)
class SplitRoundTiming:
    devices: dict[int, DeviceTiming]  # each device's own seconds by phase (model and activation transfers included)
    round_time_s: float
    server_compute_s: float  # the server's top forward and backward over the round
    iteration_s: list[float]  # how long each iteration lasted (from the first feature sent to the last step)


def split_round_timing(states: dict[int, DeviceRoundState], iterations: dict[int, list[DeviceWork]],
                       model_work: dict[int, DeviceWork], server_state: DeviceRoundState, server_iterations: list[DeviceWork],
                       cost_model: str) -> SplitRoundTiming:
    """Time one split round (see the module doc). ``iterations[d]``: device d's work per iteration (its bottom's
    FLOPs, features up, gradients down); ``model_work[d]``: its model download and upload (bytes only)."""
    count = len(server_iterations)
    if any(len(works) != count for works in iterations.values()):
        raise ValueError(f"every device of a split round runs the server's {count} iterations")
    phases = {d: [device_timing(states[d], w, cost_model) for w in works] for d, works in iterations.items()}
    model = {d: device_timing(states[d], w, cost_model) for d, w in model_work.items()}
    server = [device_timing(server_state, w, cost_model).compute_s for w in server_iterations]
    ready = {d: model[d].download_s for d in iterations}
    start = min(ready.values(), default=0.0)
    lengths = []
    for k in range(count):
        done = max(ready[d] + phases[d][k].forward_s + phases[d][k].upload_s for d in iterations) + server[k]
        for d in iterations:
            ready[d] = done + phases[d][k].download_s + phases[d][k].backward_s
        end = max(ready.values())
        lengths.append(end - start)
        start = end
    finish = {d: ready[d] + model[d].upload_s for d in iterations}
    own = {d: DeviceTiming(download_s=model[d].download_s + sum(p.download_s for p in phases[d]),
                           forward_s=sum(p.forward_s for p in phases[d]),
                           backward_s=sum(p.backward_s for p in phases[d]),
                           upload_s=model[d].upload_s + sum(p.upload_s for p in phases[d])) for d in iterations}
    return SplitRoundTiming(own, max(finish.values(), default=0.0), sum(server), lengths)
