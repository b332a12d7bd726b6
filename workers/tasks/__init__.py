"""Task implementations by type name; the worker runtime looks them up here."""

from __future__ import annotations

from workers.tasks import sleep
from workers.tasks.base import TaskContext, TaskError, TaskFunction

REGISTRY: dict[str, TaskFunction] = {
    "sleep": sleep.run,
}

__all__ = ["REGISTRY", "TaskContext", "TaskError", "TaskFunction"]
