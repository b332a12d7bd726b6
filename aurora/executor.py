"""A local stand-in for the Thermos executor: run a task's processes in a sandbox.

Processes run one at a time in the given order, each as ``bash -c <cmdline>``
in its own process group with the sandbox as working directory, its output in
``<sandbox>/.logs/<process>/<run>/{stdout,stderr}`` as Thermos lays it out. A
process that exits non-zero is rerun after ``min_duration`` seconds until it
has failed ``max_failures`` times (0 = no limit); then the remaining regular
processes are skipped and the task fails. Final processes always run last.
Setting ``stop`` kills the running process group (SIGTERM, then SIGKILL).
Processes get a small fixed environment (``task_env``), never the server's:
the server's may hold secrets, and a job is whatever its submitter wrote.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aurora.thermos import Process

SHELL = shutil.which("bash") or "/bin/sh"
TASK_PATH = "/usr/local/bin:/usr/bin:/bin"


def task_env(sandbox: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a task's processes: a fixed PATH, the sandbox as HOME."""
    return {
        "PATH": TASK_PATH,
        "HOME": str(sandbox),
        "TMPDIR": str(sandbox),
        "LANG": "C.UTF-8",
        "MESOS_SANDBOX": str(sandbox),
        **(extra or {}),
    }


KILL_GRACE = 2.0
POLL = 0.05


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``state`` is "finished", "failed" or "killed"."""

    state: str
    message: str


def run_processes(
    processes: list[Process],
    sandbox: Path,
    stop: threading.Event,
    on_start: Callable[[Process], None] = lambda p: None,
    env: dict[str, str] | None = None,
) -> Outcome:
    """Run ``processes`` in order in ``sandbox`` until done, failed or stopped.

    ``env`` is added to ``task_env(sandbox)``, the whole environment they get.
    """
    sandbox.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = task_env(sandbox, env)
    failure: str | None = None
    for process in processes:
        if stop.is_set():
            return Outcome("killed", "Killed before process " + repr(process.name) + " ran")
        if failure is not None and not process.final:
            continue
        on_start(process)
        error = _run_with_retries(process, sandbox, stop, env)
        if stop.is_set():
            return Outcome("killed", f"Killed while process {process.name!r} ran")
        if error is not None and failure is None:
            failure = error
    if failure is not None:
        return Outcome("failed", failure)
    return Outcome("finished", "Task finished: all processes succeeded")


def _run_with_retries(
    process: Process, sandbox: Path, stop: threading.Event, env: dict[str, str] | None
) -> str | None:
    failures = 0
    run = 0
    while True:
        code = _run_once(process, sandbox, run, stop, env)
        if code == 0 or stop.is_set():
            return None
        failures += 1
        if process.max_failures and failures >= process.max_failures:
            return f"Process {process.name!r} failed: exit status {code} (run {run})"
        run += 1
        if stop.wait(process.min_duration):
            return None


def _run_once(
    process: Process, sandbox: Path, run: int, stop: threading.Event, env: dict[str, str] | None
) -> int:
    logs = sandbox / ".logs" / process.name / str(run)
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        try:
            proc = subprocess.Popen(
                [SHELL, "-c", process.cmdline],
                cwd=sandbox,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            err.write(f"could not start {SHELL}: {e}\n".encode())
            return 127
        while True:
            try:
                return proc.wait(timeout=POLL)
            except subprocess.TimeoutExpired:
                if stop.is_set():
                    return _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> int:
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()
