"""What a task function gets besides its payload: ``TaskContext``, and its log, ``TaskLog``.

A task is a function ``run(payload, context) -> output``. ``payload`` is the
task's JSON payload (already parsed, untrusted); ``output`` is a JSON-able
dict recorded as the task's result. A task that cannot do its work raises
``TaskError`` with a sentence a person can act on; anything else it raises is
reported as an internal error. A long task polls ``context.cancelled`` (set on
cancel, timeout or worker shutdown) and stops early by raising ``TaskError``.

The context also carries what the worker's configuration lets tasks reach:
``stage_roots`` (directories ``file://`` sources may come from; none by
default), ``allow_net`` (networks fetched from even though they are loopback,
private or otherwise not public; none by default) and ``commands`` (the named
command lines of the ``exec`` driver; none by default).

``context.log`` is the attempt's log: a file-like writer (``print(...,
file=context.log)``) whose last ``LOG_LIMIT`` bytes travel with the attempt's
result and are kept in the ledger (``python -m matchmaker logs <id>``);
``context.logger`` is a ``logging.Logger`` writing to it. This module imports
nothing heavy: ``import workers`` stays cheap for a package of tasks.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOG_LIMIT = 64 * 1024  # bytes of an attempt's log kept: the tail
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # all but \t and \n; \r ends a line


class TaskError(Exception):
    """A task failed for a reason the submitter can read."""


class TaskLog:
    """The tail of an attempt's log: at most ``limit`` bytes (UTF-8) are kept, the
    earliest dropped first and counted. Thread-safe; control characters other than
    tab and newline are written as ``?`` (a log is text for people)."""

    __slots__ = ("_chunks", "_dropped", "_lock", "_size", "limit")

    def __init__(self, limit: int = LOG_LIMIT) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        """Append ``text``; returns its length (a file's ``write``)."""
        if not text:
            return 0
        data = _CONTROL.sub(_control, text).encode("utf-8", "replace")
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            while self._size > self.limit:
                over = self._size - self.limit
                first = self._chunks[0]
                if len(first) <= over:
                    self._chunks.popleft()
                    cut = len(first)
                else:
                    self._chunks[0] = first[over:]
                    cut = over
                self._size -= cut
                self._dropped += cut
        return len(text)

    def flush(self) -> None:
        """Nothing to do (a file's ``flush``)."""

    def __bool__(self) -> bool:
        return self._size > 0 or self._dropped > 0

    @property
    def dropped(self) -> int:
        """Bytes dropped from the head to keep the tail."""
        return self._dropped

    def text(self, limit: int | None = None) -> str:
        """The kept tail (at most ``limit`` bytes of it), with a first line telling how
        much was dropped before it, if anything was."""
        with self._lock:
            data = b"".join(self._chunks)
            dropped = self._dropped
        if limit is not None and len(data) > limit:
            dropped += len(data) - limit
            data = data[len(data) - limit :]
        body = data.decode("utf-8", "ignore")  # a character cut in two at the head goes
        return f"[... {dropped} bytes dropped ...]\n{body}" if dropped else body


def _control(match: re.Match[str]) -> str:
    return "\n" if match.group() == "\r" else "?"


class _LogHandler(logging.Handler):
    def __init__(self, log: TaskLog) -> None:
        super().__init__()
        self.log = log
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@dataclass
class TaskContext:
    task_id: str
    attempt: int
    worker: str
    sandbox: Path
    deadline: float | None = None
    aurora_url: str = "http://127.0.0.1:8081"
    cancelled: threading.Event = field(default_factory=threading.Event)
    stage_roots: tuple[Path, ...] = ()
    allow_net: tuple[Network, ...] = ()
    commands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=dict)
    log: TaskLog = field(default_factory=TaskLog)
    type: str = ""
    _logger: logging.Logger | None = field(default=None, repr=False, compare=False)

    def remaining(self) -> float | None:
        """Seconds until the deadline (wall clock), or None without one."""
        return None if self.deadline is None else self.deadline - time.time()

    @property
    def logger(self) -> logging.Logger:
        """A logger writing to this attempt's log (and nowhere else); made on first use,
        outside the logging module's registry, so it goes away with the context."""
        if self._logger is None:
            logger = logging.Logger(f"task.{self.type or 'task'}.{self.task_id}")
            logger.addHandler(_LogHandler(self.log))
            logger.propagate = False
            self._logger = logger
        return self._logger


TaskFunction = Callable[[dict[str, Any], TaskContext], dict[str, Any]]
