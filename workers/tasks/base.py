"""The contract between the worker runtime and a task implementation (``workers.context``,
where it is described; this module keeps the names where built-in tasks import them)."""

from __future__ import annotations

from workers.context import LOG_LIMIT, Network, TaskContext, TaskError, TaskFunction, TaskLog

__all__ = ["LOG_LIMIT", "Network", "TaskContext", "TaskError", "TaskFunction", "TaskLog"]
