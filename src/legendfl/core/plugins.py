"""Plugins from outside the package: strategies, client methods and fleets without a fork.

A package declares an entry point in the group ``legendfl.plugins``::

    [project.entry-points."legendfl.plugins"]
    my-strategies = "my_package.legendfl_plugin"

Importing that module registers what it brings (``register_strategy``/``register_preset``,
``register_method``, ``register_fleet``). :func:`load_plugins` imports every such module once per process; the
strategy registry calls it when it is first imported (the CLI, ``compare``, the Flower ServerApp and every
SuperNode all build a ``RunConfig`` through it), the client-method and fleet look-ups before they refuse a
name. A plugin that fails to import is reported with a warning naming it, and the rest go on.
"""
from __future__ import annotations

import importlib.metadata
import logging

log = logging.getLogger(__name__)

GROUP = "legendfl.plugins"
_loaded: dict[str, str] = {}  # entry point name -> its module, for the plugins imported so far


def load_plugins() -> dict[str, str]:
    """Import every ``legendfl.plugins`` entry point not imported yet; returns {name: module} of those loaded."""
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name in _loaded:
            continue
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not take the built-in strategies down with it
            log.warning("plugin %r (%s, entry point group %s) failed to load: %s: %s", ep.name, ep.value, GROUP,
                        type(err).__name__, err)
            _loaded[ep.name] = ""
            continue
        _loaded[ep.name] = ep.value
        log.debug("plugin %r loaded from %s", ep.name, ep.value)
    return {n: m for n, m in _loaded.items() if m}
