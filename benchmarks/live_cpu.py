"""CPU seconds per process from /proc, to see where a live run's time goes.

``Meter`` samples user+system CPU of named processes (the scheduler, the
workers, the broker's ``beam.smp``) at the start and the end of a window;
the difference over the wall time is the share of a core each one used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (children not included), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def broker_pid() -> int | None:
    """The RabbitMQ node's pid (the ``beam.smp`` that booted ``rabbit``), if there is one."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "beam.smp":
                    continue
                if b"rabbit\x00boot" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


class Meter:
    """CPU used by each named pid between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self.wall = 0.0
        self._t0 = 0.0

    def start(self) -> Meter:
        self._t0 = time.monotonic()
        self.before = {n: cpu_seconds(p) or 0.0 for n, p in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        """Cores used by each process over the window (1.0 = one core busy all the time)."""
        self.wall = time.monotonic() - self._t0
        ends = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.after = {n: seconds for n, seconds in ends.items() if seconds is not None}
        return self.shares()

    def shares(self) -> dict[str, float]:
        """Cores used by each process still there at the end (one gone, killed or restarted
        in the window, took CPU that /proc no longer shows, so it is left out)."""
        if self.wall <= 0:
            return {}
        return {
            n: round((self.after[n] - self.before[n]) / self.wall, 3)
            for n in self.before
            if n in self.after
        }
