"""A progress bar within a round (devices done, tokens per second) that is silent unless stderr is a terminal."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class RoundProgress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label, self.total, self.done, self.tokens = label, total, 0, 0
        self.start = time.perf_counter()
        self._draw()

    def advance(self, tokens: int) -> None:
        self.done += 1
        self.tokens += tokens
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        rate = self.tokens / max(1e-9, time.perf_counter() - self.start)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} devices"
                          f"  {rate:,.0f} tokens/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()
