"""An in-memory Aurora scheduler for one machine: the handler behind the local API.

It implements the subset of ``AuroraSchedulerManager`` in ``api.thrift`` with
Aurora's semantics: ``createJob`` validates the job as Aurora's configuration
manager does and inserts one PENDING task per instance; a task is placed when
its resources fit in what the machine has free (otherwise it stays PENDING and
``getPendingReason`` says "Insufficient: CPU" etc.); a placed task goes
ASSIGNED -> STARTING -> RUNNING -> FINISHED | FAILED (``aurora.executor`` runs
its Thermos processes) and ``killTasks`` moves it through KILLING to KILLED.
Every transition is recorded as a TaskEvent. A job exists while it has active
tasks; finished tasks stay queryable. Failed tasks are not rescheduled.

Every method answers a ``Response``; it never raises to the Thrift processor.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aurora.executor import run_processes
from aurora.gen.api import constants
from aurora.gen.api.ttypes import (
    AssignedTask,
    GetJobsResult,
    GetPendingReasonResult,
    JobConfiguration,
    JobKey,
    PendingReason,
    Response,
    ResponseCode,
    ResponseDetail,
    Result,
    ScheduledTask,
    ScheduleStatus,
    ScheduleStatusResult,
    ServerInfo,
    TaskConfig,
    TaskEvent,
    TaskQuery,
)
from aurora.thermos import ExecutorDataError, Process, parse_task

log = logging.getLogger(__name__)

GOOD_IDENTIFIER = re.compile(constants.GOOD_IDENTIFIER_PATTERN_PYTHON)
MAX_INSTANCES = 1000
TERMINAL = frozenset(constants.TERMINAL_STATES)
ACTIVE = frozenset(constants.ACTIVE_STATES)
_RESOURCE_FIELDS = {"numCpus": "CPU", "ramMb": "RAM", "diskMb": "DISK", "namedPort": "PORTS"}


class InvalidRequest(Exception):
    """createJob input that Aurora would answer with INVALID_REQUEST."""


@dataclass(frozen=True)
class Capacity:
    cpus: float
    ram_mb: int
    disk_mb: int

    def lacking(self, need: Capacity) -> list[str]:
        """Names of the resources ``need`` lacks here ([] when it fits)."""
        lacking = []
        if need.cpus > self.cpus + 1e-9:
            lacking.append("CPU")
        if need.ram_mb > self.ram_mb:
            lacking.append("RAM")
        if need.disk_mb > self.disk_mb:
            lacking.append("DISK")
        return lacking

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.cpus + other.cpus, self.ram_mb + other.ram_mb, self.disk_mb + other.disk_mb
        )

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.cpus - other.cpus, self.ram_mb - other.ram_mb, self.disk_mb - other.disk_mb
        )

    @staticmethod
    def of_machine(root: Path) -> Capacity:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        disk = shutil.disk_usage(root).free
        return Capacity(float(os.cpu_count() or 1), pages * page_size >> 20, disk >> 20)


@dataclass
class _Task:
    scheduled: ScheduledTask
    processes: list[Process]
    need: Capacity
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return str(self.scheduled.assignedTask.taskId)

    @property
    def key(self) -> tuple[str, str, str]:
        job = self.scheduled.assignedTask.task.job
        return (job.role, job.environment, job.name)


F = TypeVar("F", bound=Callable[..., Response])


def _answers(method: F) -> F:
    """Turn an unexpected exception into an ERROR response instead of a broken call."""

    @functools.wraps(method)
    def wrapper(self: LocalScheduler, *args: Any) -> Response:
        try:
            return method(self, *args)
        except Exception as e:
            log.exception("%s failed", method.__name__)
            return self._response(ResponseCode.ERROR, f"internal error in {method.__name__}: {e}")

    return wrapper  # type: ignore[return-value]


class LocalScheduler:
    """Aurora's scheduler semantics over local subprocesses; thread-safe."""

    def __init__(
        self, sandbox_root: Path, capacity: Capacity | None = None, cluster: str = "local"
    ) -> None:
        self.sandbox_root = sandbox_root
        self.capacity = capacity or Capacity.of_machine(sandbox_root)
        self.cluster = cluster
        self.host = socket.gethostname()
        self._lock = threading.RLock()
        self._tasks: dict[str, _Task] = {}
        self._jobs: dict[tuple[str, str, str], JobConfiguration] = {}
        self._used = Capacity(0.0, 0, 0)
        self._closed = False

    # ---- AuroraSchedulerManager ---------------------------------------------

    @_answers
    def createJob(self, description: JobConfiguration | None) -> Response:
        try:
            job, processes, need = self._validate(description)
        except InvalidRequest as e:
            return self._response(ResponseCode.INVALID_REQUEST, str(e))
        key = (job.key.role, job.key.environment, job.key.name)
        with self._lock:
            if self._closed:
                return self._response(
                    ResponseCode.ERROR_TRANSIENT, "The scheduler is shutting down."
                )
            if any(t.key == key and t.scheduled.status in ACTIVE for t in self._tasks.values()):
                return self._response(
                    ResponseCode.INVALID_REQUEST, f"Job {_canonical(job.key)} already exists"
                )
            self._jobs[key] = job
            for instance in range(job.instanceCount):
                self._insert(job, instance, processes, need)
            self._schedule()
        log.info("created job %s with %d instance(s)", _canonical(job.key), job.instanceCount)
        return self._response(ResponseCode.OK)

    @_answers
    def killTasks(
        self, job: JobKey | None, instances: set[int] | None, message: str | None
    ) -> Response:
        if job is None:
            return self._response(ResponseCode.INVALID_REQUEST, "killTasks needs a job key.")
        key = (job.role, job.environment, job.name)
        note = f"Killed by remote user: {message}" if message else "Killed by remote user"
        killed = 0
        with self._lock:
            for task in list(self._tasks.values()):
                status = task.scheduled.status
                if task.key != key or status not in ACTIVE or status == ScheduleStatus.KILLING:
                    continue
                if instances and task.scheduled.assignedTask.instanceId not in instances:
                    continue
                killed += 1
                if status == ScheduleStatus.PENDING:
                    self._transition(task, ScheduleStatus.KILLED, note)
                else:
                    self._transition(task, ScheduleStatus.KILLING, note)
                    task.stop.set()
        if not killed:
            return self._response(ResponseCode.OK, "No tasks to kill.")
        return self._response(ResponseCode.OK)

    # ---- ReadOnlyScheduler --------------------------------------------------

    @_answers
    def getTasksStatus(self, query: TaskQuery | None) -> Response:
        tasks = self._query(query or TaskQuery(), with_configs=True)
        return self._response(
            ResponseCode.OK, result=Result(scheduleStatusResult=ScheduleStatusResult(tasks))
        )

    @_answers
    def getTasksWithoutConfigs(self, query: TaskQuery | None) -> Response:
        tasks = self._query(query or TaskQuery(), with_configs=False)
        return self._response(
            ResponseCode.OK, result=Result(scheduleStatusResult=ScheduleStatusResult(tasks))
        )

    @_answers
    def getPendingReason(self, query: TaskQuery | None) -> Response:
        query = copy.copy(query) if query is not None else TaskQuery()
        if query.slaveHosts:
            return self._response(
                ResponseCode.INVALID_REQUEST, "SlaveHosts are not supported in the query."
            )
        if query.statuses:
            return self._response(
                ResponseCode.INVALID_REQUEST, "Statuses is not supported in the query."
            )
        query.statuses = {ScheduleStatus.PENDING}
        with self._lock:
            free = self.capacity - self._used
            reasons = set()
            for task in self._query(query, with_configs=False):
                need = self._tasks[task.assignedTask.taskId].need
                lacking = free.lacking(need)
                reason = ",".join(f"Insufficient: {r}" for r in lacking) or "Waiting to be placed"
                reasons.add(PendingReason(taskId=task.assignedTask.taskId, reason=reason))
        return self._response(
            ResponseCode.OK, result=Result(getPendingReasonResult=GetPendingReasonResult(reasons))
        )

    @_answers
    def getJobs(self, ownerRole: str | None) -> Response:
        with self._lock:
            active = {t.key for t in self._tasks.values() if t.scheduled.status in ACTIVE}
            configs = {
                copy.deepcopy(job)
                for key, job in self._jobs.items()
                if key in active and (not ownerRole or key[0] == ownerRole)
            }
        return self._response(ResponseCode.OK, result=Result(getJobsResult=GetJobsResult(configs)))

    # ---- lifecycle ----------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> None:
        """Kill every running task and wait for its processes to end."""
        with self._lock:
            self._closed = True
            threads = []
            for task in self._tasks.values():
                if task.scheduled.status == ScheduleStatus.PENDING:
                    self._transition(task, ScheduleStatus.KILLED, "Scheduler shut down")
                elif task.scheduled.status in ACTIVE:
                    task.stop.set()
                    if task.thread is not None:
                        threads.append(task.thread)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ---- internals ----------------------------------------------------------

    def _validate(
        self, job: JobConfiguration | None
    ) -> tuple[JobConfiguration, list[Process], Capacity]:
        if job is None or job.taskConfig is None:
            raise InvalidRequest("Job configuration must have taskConfig set.")
        if job.key is None or not all(
            isinstance(part, str) and GOOD_IDENTIFIER.match(part)
            for part in (job.key.role, job.key.environment, job.key.name)
        ):
            raise InvalidRequest(f"Job key {_canonical(job.key)} is invalid.")
        if job.cronSchedule:
            raise InvalidRequest("Cron jobs are not supported by this scheduler.")
        if job.instanceCount is None or job.instanceCount <= 0:
            raise InvalidRequest("Instance count must be positive.")
        if job.instanceCount > MAX_INSTANCES:
            raise InvalidRequest(f"Instance count must be between 1 and {MAX_INSTANCES} inclusive.")
        job = copy.deepcopy(job)
        task: TaskConfig = job.taskConfig
        if task.job is None:
            task.job = job.key
        elif task.job != job.key:
            raise InvalidRequest("Task and job keys do not match.")
        if task.owner is None:
            task.owner = job.owner
        executor = task.executorConfig
        if executor is None:
            raise InvalidRequest("Configuration may not be null.")
        if not executor.name:
            raise InvalidRequest("Executor name may not be left unset.")
        if executor.name != constants.AURORA_EXECUTOR_NAME:
            raise InvalidRequest(f"Configuration for executor '{executor.name}' doesn't exist.")
        need = _resources(task)
        try:
            processes = parse_task(executor.data or "")
        except ExecutorDataError as e:
            raise InvalidRequest(f"Invalid executor data: {e}.") from None
        return job, processes, need

    def _insert(
        self, job: JobConfiguration, instance: int, processes: list[Process], need: Capacity
    ) -> None:
        key = job.key
        task_id = f"{key.role}-{key.environment}-{key.name}-{instance}-{uuid.uuid4()}"
        scheduled = ScheduledTask(
            assignedTask=AssignedTask(
                taskId=task_id,
                slaveId=None,
                slaveHost=None,
                task=copy.deepcopy(job.taskConfig),
                assignedPorts={},
                instanceId=instance,
            ),
            status=ScheduleStatus.INIT,
            failureCount=0,
            taskEvents=[],
            ancestorId=None,
            timesPartitioned=0,
        )
        task = _Task(scheduled, processes, need)
        self._tasks[task_id] = task
        self._transition(task, ScheduleStatus.PENDING, None)

    def _schedule(self) -> None:
        """Place pending tasks, oldest first, while they fit (call with the lock held)."""
        if self._closed:
            return
        for task in self._tasks.values():
            if task.scheduled.status != ScheduleStatus.PENDING:
                continue
            if (self.capacity - self._used).lacking(task.need):
                continue
            self._used = self._used + task.need
            assigned = task.scheduled.assignedTask
            assigned.slaveId, assigned.slaveHost = f"{self.host}-local", self.host
            self._transition(task, ScheduleStatus.ASSIGNED, None)
            task.thread = threading.Thread(
                target=self._run, args=(task,), name=task.id, daemon=True
            )
            task.thread.start()

    def _run(self, task: _Task) -> None:
        sandbox = self.sandbox_root / task.id
        instance = str(task.scheduled.assignedTask.instanceId)
        processes = [
            Process(
                p.name,
                p.cmdline.replace("{{mesos.instance}}", instance)
                .replace("{{mesos.hostname}}", self.host)
                .replace("{{thermos.task_id}}", task.id),
                p.max_failures,
                p.min_duration,
                p.final,
            )
            for p in task.processes
        ]
        env = {"AURORA_TASK_ID": task.id}  # on top of the executor's minimal environment
        with self._lock:
            self._advance(task, ScheduleStatus.STARTING, "Initializing sandbox.")

        def started(process: Process) -> None:
            with self._lock:
                if task.scheduled.status == ScheduleStatus.STARTING:
                    self._advance(
                        task, ScheduleStatus.RUNNING, f"Running process {process.name!r}."
                    )

        try:
            outcome = run_processes(processes, sandbox, task.stop, started, env)
            state, message = outcome.state, outcome.message
        except Exception as e:  # a sandbox that cannot be made, say
            log.exception("task %s crashed", task.id)
            state, message = "failed", f"Executor error: {e}"
        final = {
            "finished": ScheduleStatus.FINISHED,
            "failed": ScheduleStatus.FAILED,
            "killed": ScheduleStatus.KILLED,
        }[state]
        with self._lock:
            if task.stop.is_set() and final != ScheduleStatus.KILLED:
                final, message = ScheduleStatus.KILLED, "Killed: " + message
            if final == ScheduleStatus.FAILED:
                task.scheduled.failureCount += 1
            self._transition(task, final, message)
            self._used = self._used - task.need
            self._schedule()

    def _advance(self, task: _Task, status: int, message: str | None) -> None:
        """Move forward unless a kill got there first."""
        if task.scheduled.status not in (ScheduleStatus.KILLING, *TERMINAL):
            self._transition(task, status, message)

    def _transition(self, task: _Task, status: int, message: str | None) -> None:
        task.scheduled.status = status
        task.scheduled.taskEvents.append(
            TaskEvent(
                timestamp=int(time.time() * 1000),
                status=status,
                message=message,
                scheduler=self.host,
            )
        )
        log.info("task %s -> %s", task.id, ScheduleStatus._VALUES_TO_NAMES[status])

    def _query(self, query: TaskQuery, with_configs: bool) -> list[ScheduledTask]:
        with self._lock:
            tasks = [copy.deepcopy(t.scheduled) for t in self._tasks.values() if _matches(t, query)]
        if not with_configs:
            for scheduled in tasks:
                if scheduled.assignedTask.task.executorConfig is not None:
                    scheduled.assignedTask.task.executorConfig.data = None
        start = max(0, query.offset or 0)
        end = start + query.limit if query.limit and query.limit > 0 else None
        return tasks[start:end]

    def _response(
        self, code: int, message: str | None = None, result: Result | None = None
    ) -> Response:
        return Response(
            responseCode=code,
            serverInfo=ServerInfo(clusterName=self.cluster, statsUrlPrefix=""),
            result=result,
            details=[ResponseDetail(message)] if message else [],
        )


def _resources(task: TaskConfig) -> Capacity:
    seen: dict[str, Any] = {}
    for resource in task.resources or ():
        arms = [(name, value) for name, value in vars(resource).items() if value is not None]
        if len(arms) != 1:
            raise InvalidRequest("A resource must set exactly one value.")
        name, value = arms[0]
        if name in seen and name != "namedPort":
            label = _RESOURCE_FIELDS.get(name, name)
            raise InvalidRequest(f"Multiple resource values are not supported for [{label}]")
        seen[name] = value
    for name, label in (("numCpus", "num_cpus"), ("ramMb", "ram_mb"), ("diskMb", "disk_mb")):
        if name not in seen:
            raise InvalidRequest(f"The task does not request {label}.")
        if not seen[name] > 0:
            raise InvalidRequest(f"{label} must be greater than 0.")
    return Capacity(float(seen["numCpus"]), int(seen["ramMb"]), int(seen["diskMb"]))


def _matches(task: _Task, q: TaskQuery) -> bool:
    s = task.scheduled
    role, env, name = task.key
    return (
        (not q.role or q.role == role)
        and (not q.environment or q.environment == env)
        and (not q.jobName or q.jobName == name)
        and (not q.taskIds or task.id in q.taskIds)
        and (not q.statuses or s.status in q.statuses)
        and (not q.instanceIds or s.assignedTask.instanceId in q.instanceIds)
        and (not q.slaveHosts or s.assignedTask.slaveHost in q.slaveHosts)
        and (not q.jobKeys or JobKey(role, env, name) in q.jobKeys)
    )


def _canonical(key: JobKey | None) -> str:
    if key is None:
        return "(none)"
    return f"{key.role}/{key.environment}/{key.name}"
