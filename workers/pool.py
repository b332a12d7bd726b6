"""Up to ``size`` threads that run submitted calls in order of submission.

What the runner needs of a thread pool and no more: no futures (a job
reports through the runner, not through a return value), threads started
only while every running one is busy, and a shutdown that drops what has not
started. ``ThreadPoolExecutor`` makes a ``Future`` (a ``Condition`` with its
lock) per call, a large share of a worker's CPU on short tasks. The
threads are daemons: a task abandoned at shutdown does not hold the process.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
Call = tuple[Callable[..., Any], tuple[Any, ...]]


class Pool:
    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._calls: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a call
        self._closed = False

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` on a pool thread as soon as one is free."""
        with self._lock:
            if self._closed:
                return
            if self._idle:
                self._idle -= 1  # this call is that thread's
            elif self._threads < self.size:
                self._threads += 1
                threading.Thread(
                    target=self._serve, name=f"{self.name}-{self._threads}", daemon=True
                ).start()
        self._calls.put((function, args))

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            function, args = call
            try:
                function(*args)
            except BaseException:  # the runner's calls catch their own; keep the thread
                log.exception("a call on %s failed", threading.current_thread().name)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Drop the calls not started and let each thread end after its current one."""
        with self._lock:
            self._closed = True
            threads = self._threads
        while True:
            try:
                self._calls.get_nowait()
            except queue.Empty:
                break
        for _ in range(threads):
            self._calls.put(None)
