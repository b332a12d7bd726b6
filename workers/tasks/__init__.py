"""The built-in task types. Importing this package registers them in ``workers.registry``
(each with ``@task``, as any package's tasks are); ``REGISTRY`` is that registry."""

from __future__ import annotations

from workers.registry import TASKS
from workers.tasks import data_staging, env_setup, execute, job_submission, sleep
from workers.tasks.base import TaskContext, TaskError, TaskFunction

REGISTRY = TASKS
BUILT_IN = ("sleep", "job_submission", "data_staging", "env_setup", "exec")

__all__ = [
    "BUILT_IN",
    "REGISTRY",
    "TaskContext",
    "TaskError",
    "TaskFunction",
    "data_staging",
    "env_setup",
    "execute",
    "job_submission",
    "sleep",
]
