"""A plugin as a user would ship it in their own package (entry point group ``legendfl.plugins``): importing it
registers a strategy, a client method and a fleet. tests/test_registry.py installs it through a stubbed
``importlib.metadata.entry_points``."""
from dataclasses import dataclass
from pathlib import Path

from legendfl.core.lora_layout import LoraLayout
from legendfl.core.options import StrategyOptions, option, validate
from legendfl.fleet.devices import FLEETS, register_fleet
from legendfl.methods.lora import LoraMethod
from legendfl.methods.base import register_method
from legendfl.strategies.lora_base import LoraStrategy
from legendfl.strategies.registry import register_strategy


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
            t.method = "plugin-lora"
        return tasks


class PluginLora(LoraMethod):
    name = "plugin-lora"


register_method(PluginLora())
register_fleet("plugin-jetsons", Path(FLEETS) / "jetson.toml")
