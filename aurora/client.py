"""``AuroraClient``: submit, watch and kill Aurora jobs through the scheduler's Thrift API.

Calls go as Thrift over HTTP POST to ``<url>/api`` (TJSON by default, TBinary
on request), see ``aurora.transport``. A job is what the Aurora client's
``aurora job create`` makes: a JobConfiguration whose TaskConfig carries the
resources and an ``AuroraExecutor`` ExecutorConfig holding the Thermos task
instance (``aurora.thermos``). Any answer but OK raises ``AuroraError`` with
Aurora's own message; transport failures raise ``AuroraTransportError``.
Every call carries the client's bearer token (``aurora.auth.client_token``).

A job's state is read per instance from its newest task (a job key may have
older, finished tasks from an earlier run).
"""

from __future__ import annotations

import getpass
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TJSONProtocol import TJSONProtocol
from thrift.Thrift import TApplicationException, TException

from aurora.auth import client_token
from aurora.errors import AuroraError, AuroraTransportError, AuroraWaitCancelled, AuroraWaitTimeout
from aurora.gen.api import AuroraSchedulerManager, constants
from aurora.gen.api.ttypes import (
    Container,
    CronCollisionPolicy,
    ExecutorConfig,
    Identity,
    JobConfiguration,
    JobKey,
    MesosContainer,
    Resource,
    Response,
    ResponseCode,
    ScheduledTask,
    ScheduleStatus,
    TaskConfig,
    TaskQuery,
)
from aurora.thermos import task_instance
from aurora.transport import THRIFT_BINARY, THRIFT_JSON, HttpTransport

__all__ = ["AuroraClient", "AuroraError", "JobOutcome", "TaskState", "job_key"]

TERMINAL = frozenset(constants.TERMINAL_STATES)
_PROTOCOLS: dict[str, tuple[Any, str]] = {
    "json": (TJSONProtocol, THRIFT_JSON),
    "binary": (TBinaryProtocol, THRIFT_BINARY),
}


def job_key(key: JobKey | str) -> JobKey:
    """A JobKey from a JobKey or Aurora's canonical ``role/environment/name``."""
    if isinstance(key, JobKey):
        return key
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 3 or not all(parts):
        raise AuroraError(f"job key {key!r} is not of the form role/environment/name")
    return JobKey(role=parts[0], environment=parts[1], name=parts[2])


def status_name(status: int | None) -> str:
    return ScheduleStatus._VALUES_TO_NAMES.get(status, f"UNKNOWN({status})")


@dataclass(frozen=True)
class Event:
    timestamp_ms: int
    status: str
    message: str | None


@dataclass(frozen=True)
class TaskState:
    """One Aurora task (one run of one instance) and its history."""

    task_id: str
    instance: int
    status: str
    events: tuple[Event, ...]

    @property
    def terminal(self) -> bool:
        return self.status in {status_name(s) for s in TERMINAL}

    @staticmethod
    def of(task: ScheduledTask) -> TaskState:
        events = tuple(
            Event(int(e.timestamp or 0), status_name(e.status), e.message)
            for e in task.taskEvents or ()
        )
        return TaskState(
            task.assignedTask.taskId,
            int(task.assignedTask.instanceId),
            status_name(task.status),
            events,
        )


@dataclass(frozen=True)
class JobOutcome:
    """A job that reached a terminal state: FINISHED only if every instance finished."""

    job: str
    status: str
    tasks: tuple[TaskState, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AuroraClient:
    """A client of one Aurora scheduler; safe to share between threads."""

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        protocol: str = "json",
        max_redirects: int = 3,
        *,
        token: str | None = None,
        token_file: Path | str | None = None,
    ) -> None:
        """``token`` (or the one in ``token_file``) is sent as a bearer token on every call.

        Without either, ``MM_AURORA_TOKEN_FILE`` or ``MM_AURORA_TOKEN`` is used if set.
        """
        if protocol not in _PROTOCOLS:
            raise AuroraError(f"protocol must be one of {sorted(_PROTOCOLS)}, not {protocol!r}")
        factory, media_type = _PROTOCOLS[protocol]
        self.url = url.rstrip("/")
        self._transport = HttpTransport(
            self.url + "/api",
            media_type,
            timeout,
            max_redirects,
            client_token(token, token_file),
        )
        self._client = AuroraSchedulerManager.Client(factory(self._transport))
        self._lock = threading.Lock()

    # ---- writes -------------------------------------------------------------

    def create_job(
        self,
        role: str,
        environment: str,
        name: str,
        processes: Iterable[tuple[str, str]],
        cpus: float,
        ram_mb: int,
        disk_mb: int,
        instances: int = 1,
    ) -> JobKey:
        """Create a job running ``processes`` (name, cmdline) in order on each instance."""
        key = JobKey(role=role, environment=environment, name=name)
        owner = Identity(user=getpass.getuser())
        data = task_instance(role, environment, name, list(processes), cpus, ram_mb, disk_mb)
        task = TaskConfig(
            job=key,
            owner=owner,
            isService=False,
            priority=0,
            maxTaskFailures=1,
            production=False,
            tier=None,
            resources={
                Resource(numCpus=float(cpus)),
                Resource(ramMb=ram_mb),
                Resource(diskMb=disk_mb),
            },
            constraints=set(),
            metadata=set(),
            executorConfig=ExecutorConfig(name=constants.AURORA_EXECUTOR_NAME, data=data),
            container=Container(mesos=MesosContainer()),
        )
        config = JobConfiguration(
            key=key,
            owner=owner,
            cronCollisionPolicy=CronCollisionPolicy.KILL_EXISTING,
            taskConfig=task,
            instanceCount=instances,
        )
        self._call("createJob", config)
        return key

    def kill(
        self, key: JobKey | str, instances: set[int] | None = None, message: str | None = None
    ) -> str | None:
        """Kill the job's active tasks (or some instances); return Aurora's note, if any."""
        response = self._call("killTasks", job_key(key), instances, message)
        return _details(response) or None

    # ---- reads --------------------------------------------------------------

    def tasks(self, key: JobKey | str, with_configs: bool = False) -> list[ScheduledTask]:
        """Every task of the job, old runs included, as Aurora returns them."""
        method = "getTasksStatus" if with_configs else "getTasksWithoutConfigs"
        response = self._call(method, TaskQuery(jobKeys={job_key(key)}))
        return list(response.result.scheduleStatusResult.tasks or [])

    def status(self, key: JobKey | str) -> list[TaskState]:
        """The newest task of each instance of the job, by instance id."""
        newest: dict[int, ScheduledTask] = {}
        for task in self.tasks(key):
            instance = task.assignedTask.instanceId
            if instance not in newest or _started(task) >= _started(newest[instance]):
                newest[instance] = task
        return [TaskState.of(newest[i]) for i in sorted(newest)]

    def pending_reason(self, key: JobKey | str) -> dict[str, str]:
        """Why each PENDING task of the job is not placed, by task id."""
        response = self._call("getPendingReason", TaskQuery(jobKeys={job_key(key)}))
        return {r.taskId: r.reason for r in response.result.getPendingReasonResult.reasons or ()}

    def jobs(self, role: str | None = None) -> list[JobConfiguration]:
        """The configurations of the jobs with active tasks (of one role, or all)."""
        response = self._call("getJobs", role)
        return list(response.result.getJobsResult.configs or ())

    def wait(
        self,
        key: JobKey | str,
        timeout: float,
        poll: float = 0.25,
        cancelled: threading.Event | None = None,
        on_poll: Callable[[list[TaskState]], None] | None = None,
    ) -> JobOutcome:
        """Poll until every instance is terminal; raise AuroraWaitTimeout/Cancelled otherwise."""
        key = job_key(key)
        deadline = time.monotonic() + timeout
        stop = cancelled or threading.Event()
        while True:
            states = self.status(key)
            if not states:
                raise AuroraError(f"Aurora has no tasks for job {_canonical(key)}")
            if on_poll is not None:
                on_poll(states)
            if all(s.terminal for s in states):
                return JobOutcome(_canonical(key), _overall(states), tuple(states))
            left = deadline - time.monotonic()
            if left <= 0:
                raise AuroraWaitTimeout(f"job {_canonical(key)} did not end within {timeout:g}s")
            if stop.wait(min(poll, left)):
                raise AuroraWaitCancelled(f"stopped waiting for job {_canonical(key)}")

    # ---- plumbing -----------------------------------------------------------

    def _call(self, method: str, *args: Any) -> Response:
        with self._lock:
            try:
                response: Response = getattr(self._client, method)(*args)
            except AuroraError:
                raise
            except TApplicationException as e:
                raise AuroraError(f"Aurora rejected {method}: {e.message or e}") from None
            except (TException, EOFError, ValueError) as e:
                raise AuroraTransportError(
                    f"could not decode Aurora's answer to {method}: {e}"
                ) from None
        if response.responseCode != ResponseCode.OK:
            code = ResponseCode._VALUES_TO_NAMES.get(
                response.responseCode, str(response.responseCode)
            )
            message = _details(response) or f"{method} answered {code}"
            raise AuroraError(message, code)
        return response


def _details(response: Response) -> str:
    return "; ".join(d.message for d in response.details or () if d.message)


def _started(task: ScheduledTask) -> int:
    events = task.taskEvents or []
    return int(events[0].timestamp) if events else 0


def _overall(states: list[TaskState]) -> str:
    statuses = {s.status for s in states}
    if statuses == {"FINISHED"}:
        return "FINISHED"
    for worst in ("FAILED", "LOST", "KILLED"):
        if worst in statuses:
            return worst
    return sorted(statuses)[0]


def _canonical(key: JobKey) -> str:
    return f"{key.role}/{key.environment}/{key.name}"
