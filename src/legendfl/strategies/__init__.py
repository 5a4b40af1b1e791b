"""Federated algorithms, one per file, each registered by name with its options (``registry.py``).

Importing this package imports every module in it, so a strategy file dropped here registers itself: adding
a strategy is one file. It then imports the installed plugins (entry point group ``legendfl.plugins``,
``core/plugins.py``), whose strategies register the same way. ``build_strategy`` makes one from a name, the options sections and the common
settings.
"""
from __future__ import annotations

import importlib
import pkgutil

from .registry import (build_strategy, get_entry, register_family, register_preset, register_strategy,
                       registered_bases, strategy_names)

from ..core.plugins import load_plugins

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # registration
load_plugins()  # strategies (and client methods, fleets) of installed plugins: core/plugins.py

__all__ = ["build_strategy", "get_entry", "register_family", "register_preset", "register_strategy", "registered_bases",
           "strategy_names"]
