"""CPU seconds per process from /proc, to see where a live run's time goes.

``Meter`` samples two things of named processes (the scheduler, the workers,
the broker's ``beam.smp``) at the start and the end of a window (the second
also at a given interval in between, when asked):

- user+system CPU (``/proc/<pid>/stat``); the difference over the wall time
  is the share of a core each one used;
- the time its threads were ready to run but waited for a CPU (the second
  field of ``/proc/<pid>/task/<tid>/schedstat``, in ns). On a machine whose
  cores the broker, the scheduler, the workers and the load generator share,
  this is what the machine added to a latency: a process that waited 0.3 s
  per second for a CPU was late by that much, whatever its own code did.
  A thread that ended in the window takes its waiting with it (not counted).

And the machine's steal time (``/proc/stat``): CPU time the hypervisor gave
to someone else while this machine had work for it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
Waits = dict[int, int]  # thread id -> ns spent waiting for a CPU


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (children not included), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def run_queue_waits(pid: int) -> Waits:
    """Nanoseconds each live thread of the process has waited on a run queue for a CPU."""
    waits: Waits = {}
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return waits
    for thread in threads:
        try:
            waits[int(thread.name)] = int((thread / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended, or a kernel without schedstats
    return waits


def waited(before: Waits, after: Waits) -> float:
    """Seconds the threads alive at ``after`` waited for a CPU since ``before``."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


def steal_seconds() -> float:
    """The machine's steal time so far, in CPU seconds (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / TICK if len(fields) > 8 else 0.0


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
    """CPU used, and time waited for a CPU, by each named pid between ``start()`` and ``stop()``.

    With ``every`` set, a thread also samples the waits at that interval, for
    ``wait_by_interval()``.
    """

    def __init__(self, pids: Mapping[str, int | None], every: float | None = None) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self.wall = 0.0
        self.steal = 0.0  # cores the hypervisor took over the window
        self.samples: list[dict[str, Waits]] = []  # at start, each interval, and at stop
        self._every = every
        self._t0 = 0.0
        self._steal0 = 0.0
        self._done = threading.Event()
        self._sampler: threading.Thread | None = None

    def _waits(self) -> dict[str, Waits]:
        return {n: run_queue_waits(p) for n, p in self.pids.items()}

    def start(self) -> Meter:
        self._t0 = time.monotonic()
        self._steal0 = steal_seconds()
        self.before = {n: cpu_seconds(p) or 0.0 for n, p in self.pids.items()}
        self.samples = [self._waits()]
        if self._every:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        assert self._every
        tick = self._t0
        while True:
            tick += self._every
            if self._done.wait(max(0.0, tick - time.monotonic())):
                return
            self.samples.append(self._waits())

    def stop(self) -> dict[str, float]:
        """Cores used by each process over the window (1.0 = one core busy all the time)."""
        self._done.set()
        if self._sampler is not None:
            self._sampler.join()
        self.wall = time.monotonic() - self._t0
        if self.wall > 0:
            self.steal = round((steal_seconds() - self._steal0) / self.wall, 3)
        ends = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.after = {n: seconds for n, seconds in ends.items() if seconds is not None}
        self.samples.append(self._waits())
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

    def wait_shares(self) -> dict[str, float]:
        """Seconds each process waited for a CPU per second of the window."""
        if self.wall <= 0 or len(self.samples) < 2:
            return {}
        first, last = self.samples[0], self.samples[-1]
        return {n: round(waited(first[n], last[n]) / self.wall, 3) for n in first}

    def wait_by_interval(self) -> list[float]:
        """Seconds all the processes together waited for a CPU in each sampled interval."""
        return [
            round(sum(waited(a[n], b[n]) for n in a), 3)
            for a, b in zip(self.samples, self.samples[1:], strict=False)
        ]
