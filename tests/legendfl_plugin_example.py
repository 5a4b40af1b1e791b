"""A plugin as a user would ship it in their own package (entry point group ``legendfl.plugins``): importing it
registers a strategy, a client method with its own task configuration and local term, and a fleet, without an
edit to legendfl's core, runtimes or Flower payloads. tests/test_registry.py installs it through a stubbed
``importlib.metadata.entry_points``; tests/test_protocol.py sends its task through the Flower payloads."""
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from legendfl.core.hooks import LocalTerm, register_term
from legendfl.core.lora_layout import LoraLayout
from legendfl.core.options import StrategyOptions, option, validate
from legendfl.core.task_config import TaskConfig, register_task_config
from legendfl.engine.local_terms import register_term_implementation
from legendfl.fleet.devices import FLEETS, register_fleet
from legendfl.methods.base import register_method
from legendfl.methods.lora import LoraMethod
from legendfl.strategies.lora_base import LoraStrategy
from legendfl.strategies.registry import register_strategy


@register_task_config
@dataclass(frozen=True)
class BottomLayerConfig(TaskConfig):
    """The plugin method's own task configuration: LoRA of this rank on the bottom layer only."""

    kind: ClassVar[str] = "plugin-bottom-layer"
    rank: int
    num_layers: int

    def describe(self) -> dict:
        return {"depth": self.num_layers, "ranks": [self.rank]}


@register_term
@dataclass(frozen=True)
class LoraSquarePull(LocalTerm):
    """A local term of the plugin's: ``strength * sum of squared LoRA weights``, reported before and after."""

    kind: ClassVar[str] = "plugin-lora-square-pull"
    strength: float = 1e-3


class LoraSquarePullTerm:
    methods = ("plugin-lora",)

    def __init__(self, term: LoraSquarePull) -> None:
        self.term = term

    @staticmethod
    def _square(model: torch.nn.Module) -> torch.Tensor:
        return sum((p ** 2).sum() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)

    def start(self, model, metrics) -> None:
        metrics["plugin_square_start"] = float(self._square(model))

    def penalty(self, model) -> torch.Tensor:
        return self.term.strength * self._square(model)

    def finish(self, model, metrics) -> None:
        metrics["plugin_square"] = float(self._square(model))


register_term_implementation(LoraSquarePull.kind, LoraSquarePullTerm)


@dataclass(frozen=True)
class BottomLayerOptions(StrategyOptions):
    rank: int = option(4, "LoRA rank on the bottom layer", minimum=1, integer=True)

    def __post_init__(self) -> None:
        validate(self, "plugin-bottom-layer.")


@register_strategy("plugin-bottom-layer", help="plugin: LoRA on the first layer only (trained with the plugin's method)")
class BottomLayerOnly(LoraStrategy):
    Options = BottomLayerOptions

    def make_global_layout(self, spec):
        return LoraLayout({0: self.options.rank}, spec.num_layers)

    def configure_round(self, rnd, device_ids):
        tasks = {d: self.task(rnd, d, self.global_layout) for d in device_ids}
        for t in tasks.values():
            t.method, t.config = "plugin-lora", BottomLayerConfig(self.options.rank, self.spec.num_layers)
            t.local_terms = (LoraSquarePull(),)
        return tasks

    def aggregate_round(self, rnd, results):
        self.reported = {r.device_id: (r.metrics["plugin_square_start"], r.metrics["plugin_square"]) for r in results}
        return super().aggregate_round(rnd, results)

    def summary(self):
        return {**super().summary(), "plugin_square": {str(d): v for d, v in sorted(self.reported.items())}}


class PluginLora(LoraMethod):
    """LoRA trained from the plugin's own task configuration (read as a LoRA layout)."""

    name = "plugin-lora"
    config_kind = BottomLayerConfig.kind

    def task_config(self, task):
        own = super().task_config(task)  # checked: a BottomLayerConfig
        return LoraLayout({0: own.rank}, own.num_layers)


register_method(PluginLora())
register_fleet("plugin-jetsons", Path(FLEETS) / "jetson.toml")
