"""Where legendfl's own log lines go.

Only the ``legendfl`` logger is configured, never the root logger: libraries that propagate to the root
(transformers does when the ``CI`` variable is set) must not write into a command's standard output, which
some commands reserve for JSON (``eval-adapter``).
"""
from __future__ import annotations

import logging
import typing

_MARK = "_legendfl_handler"


def configure(level: int = logging.INFO, stream: typing.TextIO | None = None) -> logging.Logger:
    """Send legendfl's log lines (message only) to ``stream`` (standard error when None) at ``level``."""
    logger = logging.getLogger("legendfl")
    for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    setattr(handler, _MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
