"""Writing a file so that a crash never leaves it torn: :func:`write_atomic`, used for every output.

The bytes go to a temporary file of a unique name in the same folder, are flushed and fsync'ed, and the file
is renamed over the old one (then the folder is fsync'ed): a crash at any point leaves either the old file or
the new one. Unique temporary names let two writers of one folder never write into each other's file.

A folder written by a library (a peft adapter, a transformers model) goes through :func:`staged_directory`: it
is written beside its place and renamed there when complete, so a reader never sees half of one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

STAGING_SUFFIX = ".partial"  # a folder being written: ``.<name>.partial`` beside its place


def write_atomic(path: str | Path, data: str | bytes, *, halfway: Callable[[], None] | None = None) -> Path:
    """Replace ``path`` with ``data`` atomically (see the module doc); ``halfway`` runs with half the bytes
    written (fault injection in tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw[: len(raw) // 2])
            if halfway is not None:
                halfway()
            fh.write(raw[len(raw) // 2:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


@contextmanager
def staged_directory(path: str | Path) -> Iterator[Path]:
    """A folder written whole or not at all: the body writes into the yielded sibling ``.<name>.partial``; when it
    returns, what it wrote there replaces ``path`` (the old folder removed first); when it raises, or writes
    nothing, ``path`` is left as it was and the staging folder is removed."""
    out = Path(path)
    staging = out.with_name(f".{out.name}{STAGING_SUFFIX}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if staging.exists():
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
