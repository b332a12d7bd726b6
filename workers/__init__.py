"""matchmaker's workers: the worker runtime, and the public way to define task types.

``from workers import task, TaskContext, TaskError`` is all a package of tasks needs
(``workers.registry`` and ``workers.context`` say how they work); importing it loads
neither the worker runtime nor the scheduler's engine.
"""

from workers.context import TaskContext, TaskError, TaskLog
from workers.registry import RegistryError, task

__all__ = ["RegistryError", "TaskContext", "TaskError", "TaskLog", "task"]
