"""Crash-safe checkpoints: after every round, everything a run needs to continue exactly.

``<out>/checkpoint.pt`` holds the run's configuration, the last finished round, the strategy's state
(``Strategy.state_dict``: global tensors, estimates, search state), the transport's state (the clock), and
the records so far. It is written atomically: to a temporary file in the same folder, flushed and fsync'ed,
then renamed over the old one (and the folder fsync'ed), so a crash at any point leaves either the previous
round's checkpoint or this round's, never a torn file (``core.files.write_atomic``). A resumed run (``legendfl run --resume DIR``) rebuilds
the run from its configuration, loads the states and continues with the next round; every random choice
derives from (seed, round, device), so it ends exactly where the uninterrupted run would have.

The file is a ``torch.save`` archive of tensors, plain data and legendfl's own dataclasses (a strategy's
estimates), loaded with ``weights_only=True``: unpickling may build only those, so a checkpoint file from
elsewhere cannot run code (:func:`load_checkpoint`).
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import os
import pkgutil
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from ..core.files import write_atomic

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
# fault injection for the crash tests: "checkpoint-write:<round>" kills this process with SIGKILL halfway
# through writing that round's checkpoint (the temporary file), as a power cut would
FAILPOINT_ENV = "LEGENDFL_FAILPOINT"


def _failpoint(name: str, rnd: int) -> None:
    if os.environ.get(FAILPOINT_ENV) == f"{name}:{rnd}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (with ``round``) atomically to ``out_dir/checkpoint.pt``."""
    out_dir = Path(out_dir)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    data = buffer.getvalue()
    return write_atomic(out_dir / CHECKPOINT, data, halfway=lambda: _failpoint("checkpoint-write", state["round"]))


REQUIRED = ("round", "config", "strategy", "transport", "records")


STATE_PACKAGES = ("legendfl.core", "legendfl.fleet", "legendfl.strategies")  # where checkpointed state is defined


def _own_dataclasses() -> list[type]:
    """The dataclasses of the packages that define what strategies and clocks keep (and of any loaded legendfl
    module, a plugin's strategy included): the only classes a checkpoint may hold (plain data; building one runs
    no code of the file's choosing)."""
    for package in STATE_PACKAGES:
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."):
            importlib.import_module(info.name)
    return [obj for name, module in list(sys.modules.items()) if name.startswith("legendfl.") and module is not None
            for obj in vars(module).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == name]


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise ValueError(f"resume: {out_dir} has no {CHECKPOINT} (nothing to resume; the run finished no round, "
                         f"or this is not a run folder)")
    try:
        with torch.serialization.safe_globals(_own_dataclasses()):
            state = torch.load(path, weights_only=True)
    except Exception as err:  # a file that is not ours, or one that would run code
        lines = [l.strip() for l in str(err).splitlines() if l.strip()]
        why = next((l for l in lines if "Unsupported global" in l), lines[0] if lines else type(err).__name__)
        raise ValueError(f"resume: {path} is not a legendfl checkpoint (a torch archive of tensors and legendfl's "
                         f"own records; {why[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"resume: {path} is not a legendfl checkpoint of format {FORMAT}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"resume: {path} lacks {', '.join(missing)} (not a complete legendfl checkpoint)")
    kinds = {"round": int, "config": dict, "strategy": dict, "transport": dict, "records": list}
    wrong = [f"{k} ({type(state[k]).__name__}, not {t.__name__})" for k, t in kinds.items()
             if isinstance(state[k], bool) or not isinstance(state[k], t)]
    if wrong:
        raise ValueError(f"resume: {path} is not a legendfl checkpoint: {', '.join(wrong)}")
    return state


def has_checkpoint(out_dir: Path) -> bool:
    return (Path(out_dir) / CHECKPOINT).exists()


def restore(state: dict[str, Any], strategy: Any, transport: Any) -> tuple[int, list[dict]]:
    """Load a checkpoint's strategy and transport states (both already built and initialised from its
    configuration); returns the round to continue with and the records so far."""
    strategy.load_state_dict(state["strategy"])
    transport.load_state_dict(state["transport"])
    return int(state["round"]) + 1, list(state["records"])
