"""FedAdapter (Cai et al., "FedAdapter: Efficient Federated Learning for Modern NLP", MobiCom 2023).

Bottleneck adapters (AdapterHub ``adapters``, ``methods/adapter.py``) in the top ``d`` layers with
bottleneck width ``w``; the layers below are frozen and carry no adapter. The configuration is searched
online by trial groups, as in its public code (``trial_error.py``):

- each window, the devices are shuffled (by seed and window) and split evenly into three groups that train
  in parallel: shallow (d, w), deeper (d + step, w; depth 1 jumps to 2) and wider (d, w + 8; capped at 64);
  a trial that would repeat another (depth already L, width already 64) is dropped;
- each group runs its own FedAvg for the window's rounds, starting from the last winner's weights (a deeper
  trial adds freshly initialised adapters below; a wider trial pads the winner's adapters with new units
  whose up-projection is zero, so its function starts unchanged);
- at the end of the window the server evaluates every group's model on its validation split, carved from
  the training data (``validation_examples``; no device trains on it, and it is never the dev split whose
  accuracy is reported); the highest accuracy (compared as numbers; the public code compares strings, a
  bug) wins, and every group continues from its weights.

Deviation, stated: the public code sizes a window by time, T = threshold * (expand * d + 1) over a per-layer
latency table of a Jetson TX2; rounds of our simulated fleet are far shorter than its TX2 rounds, so the
window is a number of rounds (``window_rounds``, default 3). The model evaluated each round is the group
continuing the current configuration (the shallow group).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..core.aggregation import weighted_average
from ..core.options import StrategyOptions, option, validate
from ..core.seeding import derive_seed, rng
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec, Strategy, Tensors, key_layer
from ..core.task_config import TaskConfig, register_task_config
from .registry import register_strategy

LOCATION = "output"  # where AdapterHub's sequential bottleneck adapter sits in a block
MAX_WIDTH = 64
WIDTH_STEP = 8


def adapter_shapes(hidden: int, width: int) -> dict[str, tuple[int, ...]]:
    """Parameters of one AdapterHub sequential bottleneck adapter, by their names inside the adapter."""
    return {"adapter_down.0.weight": (width, hidden), "adapter_down.0.bias": (width,),
            "adapter_up.weight": (hidden, width), "adapter_up.bias": (hidden,)}


@register_task_config
@dataclass(frozen=True)
class AdapterLayout(TaskConfig):
    """Bottleneck adapters in the top ``depth`` layers, ``width`` units wide (the task config of client method
    "adapter")."""

    kind: ClassVar[str] = "adapter"
    depth: int = field(metadata={"help": "adapters in the last `depth` transformer layers"})
    width: int = field(metadata={"help": "bottleneck width (units of the down-projection)"})

    def __post_init__(self) -> None:
        for name in ("depth", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"adapter {name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class FedAdapterOptions(StrategyOptions):
    depth: int = option(2, "initial adapter depth d (top layers)", minimum=1, integer=True)
    width: int = option(8, f"initial bottleneck width w (steps of {WIDTH_STEP}, at most {MAX_WIDTH})", minimum=1,
                        maximum=MAX_WIDTH, integer=True)
    depth_step: int = option(2, "layers the deeper trial adds", minimum=1, integer=True)
    window: int = option(3, "rounds per configuration-search window", minimum=1, integer=True)

    legacy: ClassVar[dict[str, str]] = {"fedadapter_depth": "depth", "fedadapter_width": "width",
                                        "fedadapter_window": "window"}

    def __post_init__(self) -> None:
        validate(self, "fedadapter.")


@register_strategy("fedadapter", help="FedAdapter: bottleneck adapters, depth and width searched online by trial groups")
class FedAdapter(Strategy):
    Options = FedAdapterOptions
    STATE = ("groups", "assignment", "window", "history", "winner")
    decisions_use_time = False  # windows are counted in rounds, winners chosen by validation accuracy

    def __init__(self, options: FedAdapterOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        o = self.options
        self.depth, self.width, self.depth_step, self.window_rounds = o.depth, o.width, o.depth_step, o.window
        self.groups: dict[str, dict[str, Any]] = {}
        self.assignment: dict[int, str] = {}
        self.window = 0
        self.history: list[dict[str, Any]] = []

    # --- tensors ------------------------------------------------------------------------------
    def fresh_adapter(self, layer: int, width: int, salt: int) -> Tensors:
        """AdapterHub's "bert" initialisation: weights ~ N(0, 0.01), biases 0."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "init", layer, width, salt))
        out = {}
        for name, shape in adapter_shapes(self.spec.hidden_size, width).items():
            key = f"{layer}.{LOCATION}.adapter.{name}"
            out[key] = torch.randn(shape, generator=gen) * 0.01 if name.endswith("weight") else torch.zeros(shape)
        return out

    def grow(self, params: Tensors, depth: int, width: int, salt: int) -> Tensors:
        """The winner's tensors extended to (depth, width)."""
        L = self.spec.num_layers
        out = {k: v.clone() for k, v in params.items() if key_layer(k) is None}
        for layer in range(L - depth, L):
            fresh = self.fresh_adapter(layer, width, salt)
            for key, value in fresh.items():
                old = params.get(key)
                if old is None:
                    out[key] = value
                elif old.shape == value.shape:
                    out[key] = old.clone()
                elif key.endswith("adapter_down.0.weight") or key.endswith("adapter_down.0.bias"):
                    out[key] = torch.cat([old, value[old.shape[0]:]])
                elif key.endswith("adapter_up.weight"):
                    out[key] = torch.cat([old, torch.zeros(old.shape[0], value.shape[1] - old.shape[1])], dim=1)
                else:
                    out[key] = old.clone()
        return out

    # --- hooks --------------------------------------------------------------------------------
    def initialize(self, spec: ModelSpec, device_ids: list[int]) -> None:
        super().initialize(spec, device_ids)
        self.depth = min(self.depth, spec.num_layers)
        base = {k: v.clone() for k, v in spec.head.items()}
        self.winner = {"config": (self.depth, self.width), "params": self.grow(base, self.depth, self.width, 0)}

    def trial_configs(self) -> dict[str, tuple[int, int]]:
        d, w = self.winner["config"]
        L = self.spec.num_layers
        deeper = min(L, 2 if d == 1 else d + self.depth_step)
        trials = {"shallow": (d, w), "deeper": (deeper, w), "wider": (d, min(MAX_WIDTH, w + WIDTH_STEP))}
        seen, out = set(), {}
        for name, cfg in trials.items():
            if cfg not in seen:
                seen.add(cfg)
                out[name] = cfg
        return out

    def start_window(self, device_ids: list[int]) -> None:
        self.window += 1
        configs = self.trial_configs()
        self.groups = {name: {"config": cfg, "params": self.grow(self.winner["params"], *cfg, self.window)}
                       for name, cfg in configs.items()}
        order = rng(self.seed, "fedadapter", self.window).permutation(sorted(device_ids))
        names = list(configs)
        self.assignment = {int(d): names[i % len(names)] for i, d in enumerate(order)}

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        if not self.groups or (rnd - 1) % self.window_rounds == 0:
            self.start_window(device_ids)
        tasks = {}
        for d in device_ids:
            group = self.groups[self.assignment.get(d, "shallow")]
            tasks[d] = DeviceTask(d, rnd, {k: v.clone() for k, v in group["params"].items()},
                                  AdapterLayout(*group["config"]), "adapter", self.round_lr(rnd))
        return tasks

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        by_group: dict[str, list[DeviceResult]] = {}
        for r in results:
            by_group.setdefault(self.assignment.get(r.device_id, "shallow"), []).append(r)
        for name, rs in by_group.items():
            self.groups[name]["params"] = weighted_average([(float(r.num_examples), r.params) for r in rs])
        return {"aggregated_devices": len(results), "groups": {n: list(g["config"]) for n, g in self.groups.items()},
                "group_sizes": {n: len(rs) for n, rs in by_group.items()}}

    def candidate_evaluations(self, rnd: int) -> dict[str, DeviceTask]:
        if rnd % self.window_rounds != 0 or len(self.groups) < 2:
            return {}
        return {name: self._task(g) for name, g in self.groups.items()}

    def receive_evaluations(self, rnd: int, metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
        scores = {name: float(m["accuracy"]) for name, m in metrics.items()}
        best = max(scores, key=lambda n: (scores[n], -list(scores).index(n)))  # numbers, ties to the earlier trial
        self.winner = {"config": self.groups[best]["config"], "params": self.groups[best]["params"]}
        for g in self.groups.values():  # the others continue from the winner's weights
            g["config"], g["params"] = self.winner["config"], self.winner["params"]
        self.history.append({"round": rnd, "scores": scores, "winner": best, "config": list(self.winner["config"])})
        self.groups = {}
        return {"fedadapter_window": self.history[-1]}

    def _task(self, group: dict[str, Any]) -> DeviceTask:
        return DeviceTask(-1, 0, group["params"], method="adapter", config=AdapterLayout(*group["config"]))

    def evaluation_task(self) -> DeviceTask:
        return self._task(self.groups.get("shallow", self.winner))

    def round_log(self, tasks: dict[int, DeviceTask]) -> dict[str, Any]:
        return {str(d): {"depth": t.config.depth, "width": t.config.width,
                         "group": self.assignment.get(d, "shallow")} for d, t in tasks.items()}

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "final_config": list(self.winner["config"]), "windows": self.history}
