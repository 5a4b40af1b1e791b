"""A device task's method-owned configuration: what its client method needs beyond the tensors.

Which layers carry LoRA at which ranks (``core.lora_layout.LoraLayout``), where bottleneck adapters sit
(``strategies.fedadapter.AdapterLayout``), a pruning mask: each is a small frozen dataclass deriving from
:class:`TaskConfig`, with a ``kind`` and :meth:`~TaskConfig.from_json`, registered with :func:`register_task_config`
by the module that defines it (a strategy, a client method or a plugin). ``DeviceTask.config`` holds one, the
client method reads its own, and a runtime carries it as JSON (:meth:`~TaskConfig.to_json`,
:func:`task_config_from_json`) without knowing any kind: a new method needs no edit to core or a runtime.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class TaskConfig:
    """Base class of a method-owned task configuration (a frozen dataclass in practice)."""

    kind: ClassVar[str] = ""

    def fields_json(self) -> dict[str, Any]:
        """The configuration's fields as JSON values (override where a field is not plain JSON)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> "TaskConfig":
        """The configuration from :meth:`fields_json`'s output (override together with it)."""
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.fields_json()}

    def describe(self) -> dict[str, Any]:
        """What a round's records show of this device's configuration (``Strategy.round_log``)."""
        return self.fields_json()


_CONFIGS: dict[str, type[TaskConfig]] = {}


def register_task_config(cls: type[TaskConfig]) -> type[TaskConfig]:
    """Class decorator: make ``cls`` (by its ``kind``) readable from JSON in every process that imported it."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} must set a kind to be registered")
    known = _CONFIGS.get(cls.kind)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"task config kind {cls.kind!r} is already {known.__module__}.{known.__qualname__}")
    _CONFIGS[cls.kind] = cls
    return cls


def task_config_from_json(data: dict[str, Any] | None) -> TaskConfig | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"a task config must be a JSON object with a kind, got {type(data).__name__}")
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in _CONFIGS:
        raise ValueError(f"task config kind must be one of {sorted(_CONFIGS)}, got {kind!r}")
    return _CONFIGS[kind].from_fields(fields)
