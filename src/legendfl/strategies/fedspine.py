"""FedSpine-style prune-and-tune (arXiv 2501.02438; only its abstract is public): LoRA plus structured pruning, with
an online multi-armed bandit per device choosing its pruning ratio and LoRA rank.

Every sentence of the abstract, and what this file does for it (the choices the abstract leaves open are marked
*choice*, with the reason):

* "combines PEFT with structured pruning ... an iterative process to prune and tune": the server holds a global
  LoRA (all layers, rank ``max(ranks)``) and a global *structure mask* (the attention heads and FFN channels each
  layer keeps). Each round the target of the mask follows the cubic ramp of gradual pruning to ``sparsity``
  over the first ``ramp`` of the rounds (*choice*: Zhu and Gupta's schedule, ``structure_mask.py``); the mask
  keeps, per layer, the groups with the highest sample-weighted importance the devices reported, at least one
  head, and a pruned group never comes back.
* "an online MAB ... adaptively determine different pruning ratios and LoRA ranks for heterogeneous devices
  without any prior knowledge of their computing and communication capabilities": one sliding-window UCB
  bandit per device (``bandit.py``; *choice*: the fleet's power modes change abruptly) over the arms
  ``ratio_steps x ranks``: the device prunes to ``min(0.95, s_t + step)`` of each layer's groups (the global
  mask first, then the globally least important of what it keeps) and trains LoRA of that rank. Its reward
  (*choice*, from the issue): local loss drop per second of its round, ``max(0, first - last step loss) /
  round seconds``, divided by the round's best, and 0 for a straggler slower than ``deadline`` x the median.
* The device (client method ``pruned-lora``) prunes its copy physically, trains, uploads the LoRA of its kept
  entries and the importance of its groups (LoRAPrune's score, ``engine/group_importance.py``).
* Aggregation: every LoRA entry averaged over the devices that kept it (element-wise counts, sample-weighted;
  ranks zero-padded as HetLoRA's, the padding not counted), the head over all devices.
* The global model is evaluated pruned to the current mask (at the end: to ``sparsity``), so its accuracy is
  at that sparsity; the run exports it pruned, with its LoRA merged, as a model plain transformers loads
  (``pruned_model/``). For comparisons at equal sparsity, ``legendfl prune`` prunes another LoRA run's dense
  model once to the same sparsity by the same importance rule (``experiments/one_shot_pruning.py``).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.aggregation import weighted_average
from ..core.group_selection import GroupSelection
from ..core.lora_layout import LoraLayout
from ..core.options import StrategyOptions, option, validate
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec, key_layer
from .bandit import SlidingWindowUCB
from .hetlora import pad, truncate
from .lora_base import LoraStrategy
from .registry import register_strategy
from .structure_mask import (GroupImportance, PrunedLoraConfig, elementwise_average, keep_top, kept_count, mean_importance,
                             scheduled_sparsity)

MAX_RATIO = 0.95  # a device keeps at least 5% of each layer's groups (and one head)


@dataclass(frozen=True)
class FedSpineOptions(StrategyOptions):
    sparsity: float = option(0.3, "target sparsity s*: the share of heads and FFN channels pruned at the end",
                             minimum=0.0, maximum=1.0)
    ramp: float = option(0.5, "share of the rounds over which the mask's sparsity ramps (cubically) to s*",
                         minimum=0.0, maximum=1.0, exclusive_minimum=True)
    ratio_steps: list[float] = option([0.0, 0.1, 0.2], "bandit arms: pruning ratio above the scheduled sparsity")
    ranks: list[int] = option([2, 4, 8], "bandit arms: LoRA ranks (the server's rank is the largest)")
    window: int = option(20, "sliding window of each device's bandit (pulls)", minimum=1, integer=True)
    deadline: float = option(1.5, "a device slower than this x the round's median time gets reward 0", minimum=1.0)
    smoothing: float = option(0.9, "moving-average weight of a device's importance scores over its steps",
                              minimum=0.0, maximum=1.0)

    def __post_init__(self) -> None:
        validate(self, "fedspine.")
        if self.sparsity >= 1:
            raise ValueError(f"fedspine.sparsity must be in [0, 1), got {self.sparsity}")
        if self.smoothing >= 1:
            raise ValueError(f"fedspine.smoothing must be in [0, 1), got {self.smoothing}")
        if not self.ratio_steps or any(not isinstance(s, (int, float)) or not 0 <= s < 1 for s in self.ratio_steps):
            raise ValueError(f"fedspine.ratio_steps must be a non-empty list of numbers in [0, 1), got {list(self.ratio_steps)}")
        if not self.ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.ranks):
            raise ValueError(f"fedspine.ranks must be a non-empty list of integers >= 1, got {list(self.ranks)}")


@dataclass
class FedSpineState:
    """What the server keeps between rounds besides the global tensors (checkpointed)."""

    keep_heads: dict[int, list[int]] = field(default_factory=dict)
    keep_channels: dict[int, list[int]] = field(default_factory=dict)
    importance: dict[str, dict[int, list[float]]] = field(default_factory=lambda: {"heads": {}, "channels": {}})
    bandits: dict[int, SlidingWindowUCB] = field(default_factory=dict)
    arms: dict[int, int] = field(default_factory=dict)  # the arm each device played this round


@register_strategy("fedspine", help="FedSpine-style prune-and-tune: structured pruning + LoRA, a bandit per device "
                                   "choosing pruning ratio and rank")
class FedSpine(LoraStrategy):
    Options = FedSpineOptions
    STATE = ("global_params", "state")
    decisions_use_time = True  # the bandits' rewards are per second

    def __init__(self, options: FedSpineOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        o = self.options
        self.arms = [(float(s), int(r)) for s in o.ratio_steps for r in o.ranks]
        self.r_max = max(o.ranks)
        self.term = GroupImportance(o.smoothing)
        self.state = FedSpineState()
        self.sent: dict[int, PrunedLoraConfig] = {}

    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        return LoraLayout.all_layers(self.r_max, spec.num_layers)

    def initialize(self, spec: ModelSpec, device_ids: list[int]) -> None:
        if spec.attention_heads < 1 or spec.hidden_size % spec.attention_heads or "intermediate.dense" not in spec.linear_modules:
            raise ValueError("fedspine prunes BERT-family encoders (attention heads and intermediate.dense known); "
                             "this model is not one")
        super().initialize(spec, device_ids)
        self.groups = {"heads": spec.attention_heads, "channels": spec.linear_modules["intermediate.dense"][1]}
        self.head_size = spec.hidden_size // spec.attention_heads
        for layer in range(spec.num_layers):
            self.state.keep_heads.setdefault(layer, list(range(self.groups["heads"])))
            self.state.keep_channels.setdefault(layer, list(range(self.groups["channels"])))

    def _ranked(self, kind: str, layer: int, kept: list[int]) -> list[int]:
        """``kept`` from the globally most to least important (ties: lower index first)."""
        scores = self.state.importance[kind].get(layer)
        return sorted(kept, key=lambda g: (-(scores[g] if scores else 0.0), g))

    def _selection(self, ratio: float) -> GroupSelection:
        """The global mask, then each layer cut to ``1 - ratio`` of its groups by global importance."""
        heads, channels = {}, {}
        for layer in range(self.spec.num_layers):
            for kind, kept, out in (("heads", self.state.keep_heads[layer], heads),
                                    ("channels", self.state.keep_channels[layer], channels)):
                n = min(len(kept), kept_count(self.groups[kind], ratio))
                out[layer] = tuple(sorted(self._ranked(kind, layer, kept)[:n]))
        return GroupSelection(self.head_size, heads, channels)

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        s_t = scheduled_sparsity(rnd - 1, self.options.sparsity, self._ramp_rounds())
        tasks, self.sent = {}, {}
        for d in device_ids:
            bandit = self.state.bandits.setdefault(d, SlidingWindowUCB(len(self.arms), self.options.window))
            arm = bandit.select()
            self.state.arms[d] = arm
            step, rank = self.arms[arm]
            config = PrunedLoraConfig(LoraLayout.all_layers(rank, self.spec.num_layers),
                                      self._selection(min(MAX_RATIO, s_t + step)))
            self.sent[d] = config
            params = config.selection.restrict(truncate(self.global_params, rank))
            tasks[d] = DeviceTask(d, rnd, params, config, "pruned-lora", self.round_lr(rnd), local_terms=(self.term,))
        return tasks

    def _ramp_rounds(self) -> int:
        return max(1, round(self.options.ramp * self.rounds)) if self.rounds else 1

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        results = [r for r in results if r.device_id in self.sent]
        if not results:
            self.sent = {}
            return {"aggregated_devices": 0}
        self._reward(results)
        shapes = self.spec.lora_shapes(self.global_layout)
        updates = []
        for r in results:
            config = self.sent[r.device_id]
            lora = {k: v for k, v in r.params.items() if key_layer(k) is not None}
            full, masks = config.selection.expand(lora, self.spec.lora_shapes(config.layout))
            padded, padded_masks = {}, {}
            for stem in {k[: -len("lora_A")] for k in full if k.endswith("lora_A")}:
                a, b = pad(full[stem + "lora_A"], full[stem + "lora_B"], self.r_max)
                ma, mb = pad(masks[stem + "lora_A"], masks[stem + "lora_B"], self.r_max)
                padded.update({stem + "lora_A": a, stem + "lora_B": b})
                padded_masks.update({stem + "lora_A": ma, stem + "lora_B": mb})
            assert all(tuple(padded[k].shape) == tuple(shapes[k]) for k in padded)
            updates.append((self.weight(r), padded, padded_masks))
        lora = elementwise_average(updates, {k: v for k, v in self.global_params.items() if key_layer(k) is not None})
        head = weighted_average([(self.weight(r), {k: v for k, v in r.params.items() if key_layer(k) is None})
                                 for r in results])
        self.global_params = {**self.global_params, **lora, **head}
        self._next_mask(rnd, results)
        self.sent = {}  # this round's configs are spent: nothing of a round outlives it but the state
        return {"aggregated_devices": len(results), "sparsity": self.sparsity(),
                "arms": {str(r.device_id): list(self.arms[self.state.arms[r.device_id]]) for r in results}}

    def _reward(self, results: list[DeviceResult]) -> None:
        times = {r.device_id: r.timing.total_s if r.timing is not None else r.wall_time_s for r in results}
        median = statistics.median(times.values())
        speed = {}
        for r in results:
            drop = max(0.0, float(r.metrics.get("first_loss", 0.0)) - float(r.metrics.get("last_loss", 0.0)))
            late = times[r.device_id] > self.options.deadline * median
            speed[r.device_id] = 0.0 if late or times[r.device_id] <= 0 else drop / times[r.device_id]
        best = max(speed.values())
        for d, v in speed.items():
            self.state.bandits[d].update(self.state.arms[d], v / best if best > 0 else 0.0)

    def _next_mask(self, rnd: int, results: list[DeviceResult]) -> None:
        target = scheduled_sparsity(rnd, self.options.sparsity, self._ramp_rounds())
        for kind, keep in (("heads", self.state.keep_heads), ("channels", self.state.keep_channels)):
            n = self.groups[kind]
            reports = []
            for r in results:
                scores = r.metrics.get("group_importance", {}).get(kind, {})
                held = (self.sent[r.device_id].selection.keep_heads if kind == "heads"
                        else self.sent[r.device_id].selection.keep_channels)
                full = {}
                for layer_text, values in scores.items():
                    layer = int(layer_text)
                    row = torch.full((n,), float("nan"), dtype=torch.float64)
                    row[list(held.get(layer, range(n)))] = torch.tensor(values, dtype=torch.float64)
                    full[layer] = row
                reports.append((self.weight(r), full))
            means = mean_importance(reports, {l: n for l in keep})
            keep.update(keep_top(means, target, candidates=keep))
            self.state.importance[kind].update({layer: mean.tolist() for layer, mean in means.items()})

    def sparsity(self) -> float:
        """The global mask's share of pruned groups (heads and channels counted apiece)."""
        total = self.spec.num_layers * (self.groups["heads"] + self.groups["channels"])
        kept = sum(len(v) for v in self.state.keep_heads.values()) + sum(len(v) for v in self.state.keep_channels.values())
        return round(1.0 - kept / total, 4)

    def evaluation_task(self) -> DeviceTask:
        selection = GroupSelection(self.head_size, {l: tuple(v) for l, v in self.state.keep_heads.items()},
                                   {l: tuple(v) for l, v in self.state.keep_channels.items()})
        config = PrunedLoraConfig(self.global_layout, selection)
        return DeviceTask(-1, 0, selection.restrict(dict(self.global_params)), config, "pruned-lora")

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "final_sparsity": self.sparsity(), "target_sparsity": self.options.sparsity}
