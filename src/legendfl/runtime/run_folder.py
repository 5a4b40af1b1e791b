"""A run's folder, kept honest: one writer at a time, outputs of one run only, inputs that cannot change unseen.

- **Lock.** :class:`RunFolder` holds an exclusive ``flock`` on ``<out>/.legendfl.lock`` while a run writes
  there; a second process (a second ``run``, ``--resume``, ``compare`` or ServerApp on the same folder) is
  refused with one line. The operating system drops the lock when its process dies (``kill -9`` included), so
  a crashed run never leaves a stale lock.
- **Overwrite.** ``--overwrite`` removes the previous run's outputs (records, summary, configuration, adapter,
  figures, checkpoint; :data:`OUTPUTS`) only after the new run's options, fleet, data and model were
  validated, and never files it did not write.
- **Fingerprint.** ``inputs.json`` records the content hash of each input file the
  configuration names (data and dev files, availability trace, fleet file, a local model directory);
  resuming or reusing a run checks them: a file that changed since is refused, naming it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..core.files import STAGING_SUFFIX, write_atomic

LOCK = ".legendfl.lock"
INPUTS = "inputs.json"
# what a run writes into its folder (figures are *.png); --overwrite removes these and nothing else
OUTPUTS = ("rounds.jsonl", "summary.json", "config.json", "partition.json", INPUTS, "checkpoint.pt", "adapter",
           "pruned_model", "global_params.safetensors")
# options that may name an input file (the fleet and model options also take built-in names)
INPUT_OPTIONS = ("data_file", "dev_file", "availability_trace", "fleet", "model")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_input(path: Path) -> str:
    if path.is_file():
        return _sha256(path)
    digest = hashlib.sha256()  # a local model directory: its files' names and contents
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0" + _sha256(f).encode())
    return digest.hexdigest()


def input_fingerprint(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{option: {"path", "sha256"}} for each option of ``config`` (a ``RunConfig.to_json()``) naming an existing
    file or folder (a built-in name such as ``jetson`` or ``minilm`` is not a path and is skipped)."""
    out = {}
    for name in INPUT_OPTIONS:
        value = config.get(name)
        if isinstance(value, str) and value and Path(value).exists():
            out[name] = {"path": str(Path(value).resolve()), "sha256": _hash_input(Path(value))}
    return out


def changed_inputs(recorded: dict[str, dict[str, str]], config: dict[str, Any]) -> list[str]:
    """The input files recorded for a run that are gone or no longer hold what they held then."""
    now = input_fingerprint(config)
    return [f"{name} {entry['path']!r} ({'missing' if name not in now else 'changed since'})"
            for name, entry in sorted(recorded.items()) if now.get(name, {}).get("sha256") != entry["sha256"]]


def check_inputs(recorded: dict[str, dict[str, str]] | None, config: dict[str, Any], what: str) -> None:
    """Refuse to continue or reuse ``what`` (a run) whose input files changed."""
    changed = changed_inputs(recorded or {}, config)
    if changed:
        raise ValueError(f"{what} was made from other inputs: {'; '.join(changed)}; restore them, or start afresh "
                         f"(--overwrite, or another folder)")


def recorded_inputs(out: Path) -> dict[str, dict[str, str]] | None:
    """The fingerprint a run wrote into ``out`` (None for runs of versions that wrote none)."""
    path = Path(out) / INPUTS
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of input files")
    return data


class RunFolder:
    """The output folder of one run, locked for as long as the object is open (``with RunFolder(out) as f``)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self._fd: int | None = None

    def __enter__(self) -> "RunFolder":
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out_dir {str(self.out)!r} is a file, not a folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(f"out_dir {str(self.out)!r} cannot be written: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"out_dir {str(self.out)!r} is being written by another process (pid {holder}); wait for "
                             f"it to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holds_outputs(self) -> bool:
        return any(p.name != LOCK for p in self.out.iterdir())

    def check_empty(self, overwrite: bool) -> None:
        """Refuse a folder that holds files, unless ``overwrite`` (then :meth:`clear` removes them later)."""
        if self.holds_outputs() and not overwrite:
            raise ValueError(f"out_dir {str(self.out)!r} already holds files (an earlier run?); pass --resume {self.out} "
                             f"to continue its run, --overwrite to replace it, or another --out-dir")

    def clear(self) -> list[str]:
        """Remove an earlier run's outputs (:data:`OUTPUTS` and figures); returns the names removed."""
        removed = []
        for p in sorted(self.out.iterdir()):
            if (p.name in OUTPUTS or p.suffix == ".png"
                    or (p.name.startswith(".") and p.name.endswith((".tmp", STAGING_SUFFIX)))):  # torn writes
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p.name)
        return removed

    def recorded_config(self) -> dict[str, Any] | None:
        """The configuration :meth:`write_start` recorded (None if this folder holds no started run)."""
        path = self.out / "config.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from None

    def write_start(self, config: dict[str, Any], inputs: dict[str, dict[str, str]]) -> None:
        """The run's configuration and input fingerprint, before its first round."""
        write_atomic(self.out / "config.json", json.dumps(config, indent=2))
        write_atomic(self.out / INPUTS, json.dumps(inputs, indent=2))


# where and how fast a run went, not what it computed
NOT_SETTINGS = ("out_dir", "threads", "runtime", "retimed_from", "federation")


def differing_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings (``RunConfig.to_json()`` keys) in which two runs' configurations differ."""
    new = json.loads(json.dumps(new))  # as written: tuples become lists
    old = json.loads(json.dumps(old))
    return [k for k in sorted((set(old) | set(new)) - set(NOT_SETTINGS)) if old.get(k) != new.get(k)]
