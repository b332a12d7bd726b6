"""``job_submission``: run a job on Aurora and report how it ended.

Payload::

    {"job": {"role": "gateway", "environment": "prod", "name": "exp-42"},
     "processes": [{"name": "prepare", "cmdline": "..."}, {"name": "solve", "cmdline": "..."}],
     "resources": {"cpus": 1.0, "ram_mb": 512, "disk_mb": 1024},   # optional
     "instances": 1,                                               # optional
     "timeout": 3600}                                              # optional, seconds

The job is created through ``AuroraClient(context.aurora_url)`` with the
processes run in order, then polled until every instance is terminal; the
client sends the bearer token from ``MM_AURORA_TOKEN_FILE`` (a 0600 file) or
``MM_AURORA_TOKEN`` in the worker's environment. When
the task is cancelled or runs out of time the Aurora job is killed. A retry
(attempt > 1) that finds the job still active from an earlier attempt waits
for that job instead of failing. FINISHED returns ``{"job", "status",
"adopted", "tasks": [{"task_id", "instance", "status", "events": [...]}]}``;
any other final status raises TaskError with Aurora's last message.
"""

from __future__ import annotations

import re
from typing import Any

from workers.registry import task as register
from workers.tasks.base import TaskContext, TaskError

try:  # the Aurora client needs thrift: the ``aurora`` extra
    from aurora.client import AuroraClient, JobOutcome
    from aurora.errors import (
        AuroraError,
        AuroraTransportError,
        AuroraWaitCancelled,
        AuroraWaitTimeout,
    )

    MISSING = ""
except ModuleNotFoundError as error:
    MISSING = error.name or "thrift"

DEFAULT_TIMEOUT = 3600.0
MAX_PROCESSES = 64
MAX_CMDLINE = 64 * 1024
_IDENTIFIER = re.compile(r"^[\w\-\.]+$")
_RESOURCES = {
    "cpus": (float, 1.0, 1e4),
    "ram_mb": (int, 128, 1 << 24),
    "disk_mb": (int, 128, 1 << 30),
}


@register("job_submission")
def run(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    if MISSING:
        raise TaskError(
            f"job_submission: this worker lacks {MISSING}: "
            "pip install 'matchmaker-scheduler[aurora]'"
        )
    role, environment, name = _job(payload.get("job"))
    processes = _processes(payload.get("processes"))
    resources = _resources(payload.get("resources", {}))
    instances = payload.get("instances", 1)
    if isinstance(instances, bool) or not isinstance(instances, int) or not 1 <= instances <= 1000:
        raise TaskError("job_submission: 'instances' must be an integer from 1 to 1000")
    timeout = payload.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise TaskError("job_submission: 'timeout' must be a positive number of seconds")
    remaining = context.remaining()
    if remaining is not None:
        timeout = min(timeout, remaining)
    key = f"{role}/{environment}/{name}"

    try:
        client = AuroraClient(context.aurora_url)
    except AuroraError as e:  # a token file that is missing or readable by others
        raise TaskError(f"job_submission: cannot talk to Aurora: {e}") from None
    adopted = False
    try:
        client.create_job(role, environment, name, processes, instances=instances, **resources)
    except AuroraTransportError as e:
        raise TaskError(f"job_submission: could not submit job {key}: {e}") from None
    except AuroraError as e:
        if not (context.attempt > 1 and "already exists" in str(e)):
            raise TaskError(f"job_submission: Aurora refused job {key}: {e}") from None
        adopted = True  # our earlier attempt's job is still running: wait for it
    try:
        outcome = client.wait(key, timeout=max(0.0, timeout), cancelled=context.cancelled)
    except (AuroraWaitTimeout, AuroraWaitCancelled) as e:
        why = (
            "was cancelled"
            if isinstance(e, AuroraWaitCancelled)
            else f"timed out after {timeout:g}s"
        )
        raise TaskError(f"job_submission: job {key} {why}; {_kill(client, key, why)}") from None
    except AuroraError as e:
        raise TaskError(f"job_submission: lost track of job {key}: {e}") from None
    if outcome.status != "FINISHED":
        raise TaskError(
            f"job_submission: Aurora job {key} ended {outcome.status}: {_last_message(outcome)}"
        )
    return {**outcome.to_dict(), "adopted": adopted}


def _kill(client: AuroraClient, key: str, why: str) -> str:
    try:
        client.kill(key, message=f"matchmaker task {why}")
    except AuroraError as e:
        return f"killing it failed: {e}"
    return "killed it"


def _last_message(outcome: JobOutcome) -> str:
    for task in outcome.tasks:
        if task.status != "FINISHED" and task.events:
            return f"instance {task.instance}: {task.events[-1].message or task.status}"
    return "no message"


def _job(job: Any) -> tuple[str, str, str]:
    if not isinstance(job, dict):
        raise TaskError("job_submission: 'job' must be an object with role, environment and name")
    parts = tuple(job.get(k) for k in ("role", "environment", "name"))
    for field, value in zip(("role", "environment", "name"), parts, strict=True):
        if not isinstance(value, str) or not _IDENTIFIER.match(value):
            raise TaskError(f"job_submission: job {field} must be letters, digits, '_', '-' or '.'")
    return parts  # type: ignore[return-value]


def _processes(processes: Any) -> list[tuple[str, str]]:
    if not isinstance(processes, list) or not 1 <= len(processes) <= MAX_PROCESSES:
        raise TaskError(
            f"job_submission: 'processes' must be a list of 1 to {MAX_PROCESSES} processes"
        )
    result = []
    for i, process in enumerate(processes, 1):
        name = process.get("name") if isinstance(process, dict) else None
        cmdline = process.get("cmdline") if isinstance(process, dict) else None
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise TaskError(
                f"job_submission: process {i} needs a 'name' of letters, digits, '_', '-', '.'"
            )
        if not isinstance(cmdline, str) or not cmdline.strip() or len(cmdline) > MAX_CMDLINE:
            raise TaskError(f"job_submission: process {name!r} needs a non-empty 'cmdline'")
        result.append((name, cmdline))
    if len({n for n, _ in result}) != len(result):
        raise TaskError("job_submission: process names must be unique")
    return result


def _resources(resources: Any) -> dict[str, Any]:
    if not isinstance(resources, dict) or set(resources) - set(_RESOURCES):
        raise TaskError(f"job_submission: 'resources' may only set {', '.join(_RESOURCES)}")
    result: dict[str, Any] = {}
    for field, (kind, default, top) in _RESOURCES.items():
        value = resources.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= top:
            raise TaskError(
                f"job_submission: resource {field} must be a number above 0 and at most {top:g}"
            )
        if kind is int and value != int(value):
            raise TaskError(f"job_submission: resource {field} must be a whole number")
        result[field] = kind(value)
    return result
