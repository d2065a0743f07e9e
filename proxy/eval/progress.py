"""A small progress bar on stderr (no dependency): redrawn in place on a terminal, a plain line
every 10% otherwise (logs, CI), silent when disabled."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 28


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    def __init__(self, total: int, label: str, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(total, 0)
        self.label = label
        self.done = 0
        self.notes: dict[str, int] = {}
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0
        self._tenth = -1

    def advance(self, steps: int = 1, **notes: int) -> None:
        """`steps` more done; `notes` are running counts shown after the bar (cached=1, errors=1)."""
        self.done += steps
        for name, count in notes.items():
            self.notes[name] = self.notes.get(name, 0) + count
        if not self._enabled:
            return
        now = time.monotonic()
        if self._tty and (now - self._drawn >= 0.1 or self.done >= self.total):
            self._drawn = now
            self._stream.write("\r" + self.line() + "\x1b[K")
            self._stream.flush()
        elif not self._tty and self.total and self.done * 10 // self.total > self._tenth:
            self._tenth = self.done * 10 // self.total
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    def line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(WIDTH * min(fraction, 1.0))
        elapsed = time.monotonic() - self._started
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        notes = "".join(f" {name} {count}" for name, count in self.notes.items() if count)
        timing = f"{duration(elapsed)} elapsed" + (f", ~{duration(eta)} left" if eta and self.done < self.total else "")
        return f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total}{notes} ({timing})"

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
