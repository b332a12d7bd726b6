"""Task implementations by type name; the worker runtime looks them up here."""

from __future__ import annotations

from workers.tasks import data_staging, env_setup, job_submission, sleep
from workers.tasks.base import TaskContext, TaskError, TaskFunction

REGISTRY: dict[str, TaskFunction] = {
    "sleep": sleep.run,
    "job_submission": job_submission.run,
    "data_staging": data_staging.run,
    "env_setup": env_setup.run,
}

__all__ = ["REGISTRY", "TaskContext", "TaskError", "TaskFunction"]
