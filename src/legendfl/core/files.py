"""Writing a file so that a crash never leaves it torn: :func:`write_atomic`, used for every output.

The bytes go to a temporary file of a unique name in the same folder, are flushed and fsync'ed, and the file
is renamed over the old one (then the folder is fsync'ed): a crash at any point leaves either the old file or
the new one. Unique temporary names let two writers of one folder never write into each other's file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


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
