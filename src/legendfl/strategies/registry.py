"""The strategy registry: a name -> a :class:`~legendfl.core.strategy.Strategy` class and its options.

A strategy file registers itself::

    @register_strategy("hetlora", help="HetLoRA: heterogeneous ranks, ...")
    class HetLoRA(LoraStrategy):
        Options = HetLoRAOptions

and may register **presets**: names that stand for the same class with some options fixed (LEGEND's
ablations, ``legend-literal``, the paper's pre-test layouts of FedLoRA). A preset reads its base
strategy's options section (``[strategy.legend]`` applies to ``legend-no-depth``) and then fixes its own.
A **family** is a preset per suffix (``fedlora-depth-3``). Adding a strategy is one file in
``strategies/`` (the package imports every module in it); a plugin or a test can register one from anywhere
before the run is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.options import StrategyOptions
from ..core.strategy import Strategy


@dataclass(frozen=True)
class StrategyEntry:
    name: str
    cls: type[Strategy]
    base: str  # the options section it reads: its own name, or the base strategy's for a preset
    fixed: dict[str, Any] = field(default_factory=dict)  # options a preset fixes
    help: str = ""

    @property
    def options_cls(self) -> type:
        return self.cls.Options

    def options(self, section: dict[str, Any] | None = None) -> Any:
        """The options dataclass from a config section (validated by the dataclass) with the preset's fixes."""
        values = dict(section or {})
        known = {f.name for f in dataclasses.fields(self.options_cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} of strategy {self.base!r}; allowed: {sorted(known)}")
        return self.options_cls(**{**values, **self.fixed})


_ENTRIES: dict[str, StrategyEntry] = {}
_FAMILIES: dict[str, tuple[str, Callable[[str], dict[str, Any]], str]] = {}


def register_strategy(name: str, *, help: str = "") -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register ``cls`` under ``name`` (its ``name`` attribute is set to it)."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        if not dataclasses.is_dataclass(cls.Options) or not issubclass(cls.Options, StrategyOptions):
            raise TypeError(f"strategy {name!r}: Options must be a dataclass deriving from "
                            f"legendfl.core.options.StrategyOptions, got {cls.Options!r}")
        cls.name = name
        _ENTRIES[name] = StrategyEntry(name, cls, name, {}, help or (cls.__doc__ or "").strip().splitlines()[0])
        return cls

    return decorate


def register_preset(name: str, base: str, help: str = "", **fixed: Any) -> None:
    """``name`` = strategy ``base`` with the options ``fixed``."""
    entry = _ENTRIES[base]
    entry.options(fixed)  # the fixed options must be valid
    _ENTRIES[name] = StrategyEntry(name, entry.cls, base, dict(fixed), help)


def register_family(prefix: str, base: str, options: Callable[[str], dict[str, Any]], help: str = "") -> None:
    """Names ``prefix + suffix`` = strategy ``base`` with ``options(suffix)`` fixed (e.g. ``fedlora-depth-3``)."""
    _FAMILIES[prefix] = (base, options, help)


def unregister(name: str) -> None:
    """Remove a registered name (for tests and plugins that register temporary strategies)."""
    _ENTRIES.pop(name, None)


def registered_bases() -> dict[str, StrategyEntry]:
    """Registered strategies that are not presets (the names options sections may use)."""
    return {n: e for n, e in _ENTRIES.items() if e.base == n}


def strategy_names() -> list[str]:
    """Registered strategy and preset names (families are listed as ``prefix<suffix>``)."""
    return sorted(_ENTRIES) + sorted(f"{p}<...>" for p in _FAMILIES)


def get_entry(name: str) -> StrategyEntry:
    if name in _ENTRIES:
        return _ENTRIES[name]
    for prefix, (base, options, help) in _FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            fixed = options(name[len(prefix):])
            entry = StrategyEntry(name, _ENTRIES[base].cls, base, fixed, help)
            entry.options()  # validates the suffix
            return entry
    raise ValueError(f"strategy must be one of {strategy_names()}, got {name!r}")


def build_strategy(name: str, sections: dict[str, dict[str, Any]] | None = None, **common: Any) -> Strategy:
    """A strategy by name, with its options from ``sections[<its base name>]`` and the common settings."""
    entry = get_entry(name)
    strategy = entry.cls(entry.options((sections or {}).get(entry.base)), **common)
    if "name" not in vars(strategy):  # a strategy may name itself from its options (fedlora-<pretest>)
        strategy.name = name
    return strategy
