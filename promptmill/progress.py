"""A small progress line on stderr: a live bar on a terminal, a line every few seconds else."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """``label  [#####.....]  1234/5000  25%  812/s``, redrawn at most 10 times a second."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._count = 0
        self.extra = ""

    def update(self, count: int, total: int | None = None) -> None:
        self._count = count
        if total is not None:
            self.total = total
        now = time.monotonic()
        if now - self._last_draw >= (0.1 if self._tty else 5.0):
            self._last_draw = now
            self._draw(end="")

    def finish(self) -> None:
        self._draw(end="\n")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _draw(self, end: str) -> None:
        rate = self._count / max(self.elapsed, 1e-6)
        if self.total:
            share = min(1.0, self._count / self.total)
            bar = "#" * int(share * 30)
            text = f"{self.label} [{bar:<30}] {self._count}/{self.total} {share:4.0%} {rate:7.1f}/s"
        else:
            text = f"{self.label} {self._count} {rate:7.1f}/s"
        text += f" {self.extra}" if self.extra else ""
        if self._tty:
            self._stream.write("\r\033[K" + text + end)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
