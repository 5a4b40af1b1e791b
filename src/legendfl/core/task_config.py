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

from .kinds import KindRegistry


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


_CONFIGS = KindRegistry("task config")


def register_task_config(cls: type[TaskConfig]) -> type[TaskConfig]:
    """Class decorator: make ``cls`` (by its ``kind``) readable from JSON in every process that imported it."""
    return _CONFIGS.register(cls)


def task_config_from_json(data: dict[str, Any] | None) -> TaskConfig | None:
    if data is None:
        return None
    cls, fields = _CONFIGS.split(data)
    return cls.from_fields(fields)
