"""The executor data of an Aurora job: a Thermos task instance as JSON.

The real Aurora client puts ``ExecutorConfig(name="AuroraExecutor",
data=<json>)`` into each TaskConfig, where ``<json>`` is the job's Pystachio
config rendered to JSON: ``role``, ``environment``, ``name``, ``cluster`` ...
and a ``task`` holding Thermos ``processes`` (each with ``name`` and
``cmdline`` plus options such as ``max_failures``, ``min_duration``,
``final``), ``constraints`` (each an ``order`` of process names) and
``resources`` (cpu, ram and disk in bytes).

``task_instance`` writes that JSON; ``parse_task`` reads it back into the
processes to run, in an order that honours every ordering constraint.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

MB = 1024 * 1024
_NAME = re.compile(r"^[\w\-\.]+$")
MAX_PROCESSES = 256


class ExecutorDataError(ValueError):
    """The executor data is not a Thermos task this executor can run."""


@dataclass(frozen=True)
class Process:
    name: str
    cmdline: str
    max_failures: int = 1  # runs that may fail before the process is failed; 0 = unlimited
    min_duration: float = 5.0  # seconds between restarts
    final: bool = False  # finalizing process: runs after the regular ones, whatever happened


def task_instance(
    role: str,
    environment: str,
    name: str,
    processes: list[tuple[str, str]],
    cpus: float,
    ram_mb: int,
    disk_mb: int,
    cluster: str = "local",
) -> str:
    """The JSON the Aurora client writes for a job running ``processes`` in order."""
    thermos_processes = [
        {
            "name": pname,
            "cmdline": cmdline,
            "max_failures": 1,
            "min_duration": 5,
            "daemon": False,
            "ephemeral": False,
            "final": False,
        }
        for pname, cmdline in processes
    ]
    task = {
        "name": name,
        "processes": thermos_processes,
        "constraints": [{"order": [pname for pname, _ in processes]}] if processes else [],
        "resources": {"cpu": float(cpus), "ram": int(ram_mb) * MB, "disk": int(disk_mb) * MB},
        "max_failures": 1,
        "max_concurrency": 0,
        "finalization_wait": 30,
    }
    instance = {
        "role": role,
        "environment": environment,
        "name": name,
        "cluster": cluster,
        "task": task,
        "service": False,
        "production": False,
        "priority": 0,
        "max_task_failures": 1,
        "cron_collision_policy": "KILL_EXISTING",
        "enable_hooks": False,
    }
    return json.dumps(instance, sort_keys=True)


def parse_task(data: str) -> list[Process]:
    """The processes of a task instance, regular ones in constraint order, then final ones."""
    try:
        instance = json.loads(data)
    except ValueError as e:
        raise ExecutorDataError(f"executor data is not JSON: {e}") from None
    task = instance.get("task") if isinstance(instance, dict) else None
    if not isinstance(task, dict):
        raise ExecutorDataError("executor data has no 'task' object")
    raw = task.get("processes")
    if not isinstance(raw, list) or not raw:
        raise ExecutorDataError("the task has no processes")
    if len(raw) > MAX_PROCESSES:
        raise ExecutorDataError(f"the task has more than {MAX_PROCESSES} processes")
    processes = [_process(p) for p in raw]
    names = [p.name for p in processes]
    if len(set(names)) != len(names):
        raise ExecutorDataError("process names in the task are not unique")
    edges = _order_edges(task.get("constraints", []), set(names))
    regular = [p for p in processes if not p.final]
    final = [p for p in processes if p.final]
    return _ordered(regular, edges) + _ordered(final, edges)


def _process(raw: Any) -> Process:
    if not isinstance(raw, dict):
        raise ExecutorDataError("a process is not an object")
    name, cmdline = raw.get("name"), raw.get("cmdline")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ExecutorDataError(f"process name {name!r} is missing or invalid")
    if not isinstance(cmdline, str) or not cmdline.strip():
        raise ExecutorDataError(f"process {name!r} has no cmdline")
    max_failures = raw.get("max_failures", 1)
    min_duration = raw.get("min_duration", 5)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise ExecutorDataError(f"process {name!r} has an invalid max_failures")
    if isinstance(min_duration, bool) or not isinstance(min_duration, int | float):
        raise ExecutorDataError(f"process {name!r} has an invalid min_duration")
    return Process(
        name, cmdline, max_failures, max(0.0, float(min_duration)), bool(raw.get("final"))
    )


def _order_edges(constraints: Any, names: set[str]) -> set[tuple[str, str]]:
    if not isinstance(constraints, list):
        raise ExecutorDataError("task constraints must be a list")
    edges: set[tuple[str, str]] = set()
    for constraint in constraints:
        order = constraint.get("order") if isinstance(constraint, dict) else None
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
            raise ExecutorDataError("a task constraint has no 'order' list of process names")
        unknown = [n for n in order if n not in names]
        if unknown:
            raise ExecutorDataError(f"ordering constraint names unknown process {unknown[0]!r}")
        edges.update(itertools.pairwise(order))
    return edges


def _ordered(processes: list[Process], edges: set[tuple[str, str]]) -> list[Process]:
    """Topological order (Kahn), ties broken by declaration order."""
    names = {p.name for p in processes}
    before = {p.name: {a for a, b in edges if b == p.name and a in names} for p in processes}
    result: list[Process] = []
    left = list(processes)
    while left:
        ready = next((p for p in left if not before[p.name]), None)
        if ready is None:
            raise ExecutorDataError("the task's ordering constraints form a cycle")
        result.append(ready)
        left.remove(ready)
        for deps in before.values():
            deps.discard(ready.name)
    return result
