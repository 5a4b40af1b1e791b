"""Classes registered by a ``kind`` string, so that their instances travel as JSON and come back as themselves
(task configs, ``core.task_config``; local terms, ``core.hooks``). The module that defines a class registers it;
a process can read a kind once it has imported that module."""
from __future__ import annotations

from typing import Any


class KindRegistry:
    """Classes of one family (``what``, for messages) by their ``kind`` class attribute."""

    def __init__(self, what: str, unset: str = "") -> None:
        self.what, self.unset = what, unset
        self.classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        kind = getattr(cls, "kind", self.unset)
        if kind == self.unset:
            raise ValueError(f"{cls.__name__} must set its own kind to be registered")
        known = self.classes.get(kind)
        if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"{self.what} kind {kind!r} is already {known.__module__}.{known.__qualname__}")
        self.classes[kind] = cls
        return cls

    def split(self, data: Any) -> tuple[type, dict[str, Any]]:
        """The registered class a JSON object names, and its other fields; one line naming the kinds otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"a {self.what} must be a JSON object with a kind, got {type(data).__name__}")
        fields = dict(data)
        kind = fields.pop("kind", None)
        if kind not in self.classes:
            raise ValueError(f"{self.what} kind must be one of {sorted(self.classes)}, got {kind!r}")
        return self.classes[kind], fields
