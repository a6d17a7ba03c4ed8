"""Per-tensor progress on rank 0 (other ranks pass ``enabled=False`` and stay quiet).

On a terminal one line is redrawn after every tensor; in a log file (not a TTY) a line is written at
most every ``every_s`` seconds, plus the first and the last, so a 14B conversion logs tens of lines,
not thousands. Progress goes to stdout; stderr is kept for the one-line error.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


class Progress:
    def __init__(self, label: str, total: int, *, enabled: bool = True, stream: TextIO | None = None,
                 every_s: float = 5.0):
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stdout
        self.tty = enabled and self.stream.isatty()
        self.every_s = every_s
        self.done = self.bytes = 0
        self.start = self._last = time.monotonic()

    def update(self, name: str, nbytes: int) -> None:
        self.done += 1
        self.bytes += nbytes
        if not self.enabled:
            return
        now = time.monotonic()
        last = self.done == self.total
        if self.tty:
            width = 24
            fill = width * self.done // max(self.total, 1)
            self.stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self._text(now)} {name[-40:]:<40}")
            if last:
                self.stream.write("\n")
        elif self.done == 1 or last or now - self._last >= self.every_s:
            self.stream.write(f"[dcpo-convert] {self._text(now)} {name}\n")
            self._last = now
        self.stream.flush()

    def _text(self, now: float) -> str:
        return (f"{self.label}: tensor {self.done}/{self.total}, {_mb(self.bytes)}, "
                f"{now - self.start:.1f} s")


def say(msg: str, enabled: bool = True) -> None:
    """A one-off status line on stdout (phase changes: 'saving', 'verifying', ...)."""
    if enabled:
        print(f"[dcpo-convert] {msg}", flush=True)
