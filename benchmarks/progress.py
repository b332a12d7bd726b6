"""A tiny progress bar on stderr, drawn only when stderr is a terminal or forced.

``Progress(total, label)`` is updated with ``advance(n)`` or ``update(done)``
and redrawn at most ten times a second; ``close()`` ends the line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``[#####.....]  53%  label  12.3 s`` on one stderr line."""

    def __init__(
        self,
        total: float,
        label: str,
        *,
        stream: TextIO | None = None,
        width: int = 30,
        force: bool = False,
    ) -> None:
        self.total = max(float(total), 1e-12)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.done = 0.0
        self.started = time.monotonic()
        self._drawn = -1.0
        self.enabled = force or self.stream.isatty()

    def advance(self, amount: float = 1.0) -> None:
        self.update(self.done + amount)

    def update(self, done: float) -> None:
        self.done = min(done, self.total)
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        share = self.done / self.total
        filled = int(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = now - self.started
        self.stream.write(f"\r[{bar}] {share:4.0%}  {self.label}  {elapsed:5.1f} s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.done = self.total
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
