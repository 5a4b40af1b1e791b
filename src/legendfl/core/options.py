"""Help-annotated, self-validating option dataclasses (the pattern of peft's ``LoraConfig``).

``option(default, help, choices=..., minimum=..., positive=...)`` declares a field; :func:`validate`
(called from ``__post_init__``) checks every declared constraint and raises one ``ValueError`` that names
the field (with ``prefix``, e.g. ``hetlora.r_min``) and what is allowed. ``None`` is allowed where the
field's type says so (``int | None``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any, ClassVar


def option(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
           maximum: float | None = None, integer: bool = False, exclusive_minimum: bool = False) -> Any:
    meta: dict[str, Any] = {"help": help}
    for key, value in (("choices", choices), ("minimum", minimum), ("maximum", maximum)):
        if value is not None:
            meta[key] = value
    meta["integer"] = integer
    meta["exclusive_minimum"] = exclusive_minimum
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def validate(obj: Any, prefix: str = "") -> None:
    """Check every field's declared constraints (``None`` passes where the default is ``None``)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = prefix + f.name
        meta = f.metadata
        if value is None and (f.default is None or "None" in str(f.type)):  # an optional field left unset
            continue
        kind = str(f.type).replace(" | None", "").replace("Optional[", "").rstrip("]") if "list" not in str(f.type) else str(f.type)
        if kind == "str" and not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if "list[" in kind:
            item, words = ((str,), "strings") if "list[str]" in kind else ((int, float), "numbers") if "list[float]" in kind \
                else ((int,), "integers")
            if (not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, item) for v in value)):
                raise ValueError(f"{name} must be a list of {words}, got {value!r}")
        choices = meta.get("choices")
        if choices is not None:
            if value not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
            continue
        if meta.get("integer"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if lo is None and hi is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if lo is not None and (value <= lo if meta.get("exclusive_minimum") else value < lo):
            raise ValueError(f"{name} must be {'>' if meta.get('exclusive_minimum') else '>='} {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ValueError(f"{name} must be <= {hi}, got {value!r}")


class StrategyOptions:
    """Base of every strategy's options dataclass: the hooks the run configuration calls, doing nothing unless a
    strategy overrides them (a class attribute, so a frozen dataclass may inherit it)."""

    # flat option names of earlier versions -> this strategy's option (config.normalize: read with a FutureWarning)
    legacy: ClassVar[dict[str, str]] = {}

    def check_run(self, cfg: Any) -> None:
        """Refuse, naming the option, what cannot go with the run's common options (``cfg``: the RunConfig)."""

    def check_num_layers(self, num_layers: int) -> None:
        """Refuse, before the model's weights load, what cannot fit a model of ``num_layers`` blocks."""
