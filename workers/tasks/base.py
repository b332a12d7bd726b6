"""The contract between the worker runtime and a task implementation.

A task is a function ``run(payload, context) -> output``. ``payload`` is the
task's JSON payload (already parsed, untrusted); ``output`` is a JSON-able
dict recorded as the task's result. A task that cannot do its work raises
``TaskError`` with a sentence a person can act on; anything else it raises is
reported as an internal error. A long task polls ``context.cancelled`` (set on
cancel, timeout or worker shutdown) and stops early by raising ``TaskError``.
The context also carries what the worker's configuration lets tasks reach:
``stage_roots`` (directories ``file://`` sources may come from; none by
default) and ``allow_net`` (networks fetched from even though they are
loopback, private or otherwise not public; none by default).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TaskError(Exception):
    """A task failed for a reason the submitter can read."""


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

    def remaining(self) -> float | None:
        """Seconds until the deadline (wall clock), or None without one."""
        return None if self.deadline is None else self.deadline - time.time()


TaskFunction = Callable[[dict[str, Any], TaskContext], dict[str, Any]]
