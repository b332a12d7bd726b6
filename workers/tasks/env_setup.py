"""``env_setup``: make an experiment's working directory and run allow-listed setup steps.

Payload::

    {"directory": "exp-1",                       # relative to the worker's sandbox
     "steps": [                                  # optional, run in order
       {"step": "mkdir", "path": "inputs"},
       {"step": "write_file", "path": "run.cfg", "content": "n=4\\n"},
       {"step": "venv", "path": "venv", "pip": false},
       {"step": "pip_install", "venv": "venv", "packages": ["mypkg==1.0"], "find_links": "wheels"},
       {"step": "check_python", "min_version": "3.11"}],
     "timeout": 600}

Every path is relative to the experiment directory and may not leave it
(``workers.tasks.paths``). Steps are data, never shell strings: each kind is
a fixed action, and any other kind is refused before anything runs. Commands
run as argument lists: ``python -m venv``; ``pip install`` strictly offline
(``--no-index``, wheels only, from a ``find_links`` directory inside the
experiment, package names checked), so nothing is fetched and no package
build code runs. Output: ``{"directory", "python", "steps": [...]}``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.tasks.base import TaskContext, TaskError
from workers.tasks.paths import PathError, atomic_file, make_dirs, parts_of

DEFAULT_TIMEOUT = 600.0
MAX_STEPS = 100
MAX_FILE_BYTES = 1 << 20
_PACKAGE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:==[A-Za-z0-9.+!_-]+)?$")
_VERSION = re.compile(r"^\d+(?:\.\d+){0,2}$")


class _Setup:
    """One env_setup run: the experiment directory, the deadline, the cancel flag."""

    def __init__(self, directory: Path, deadline: float, cancelled: threading.Event) -> None:
        self.directory = directory
        self.deadline = deadline
        self.cancelled = cancelled

    def path(self, step: dict[str, Any], key: str = "path") -> Path:
        return self.directory.joinpath(*parts_of(step.get(key), f"'{key}'"))

    def command(self, argv: list[str], what: str) -> str:
        """Run ``argv`` (no shell) in the experiment directory; its output, or TaskError."""
        if self.cancelled.is_set():
            raise TaskError("env_setup: cancelled")
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
        env.pop("PYTHONPATH", None)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise TaskError(f"env_setup: {what} could not start: {e.strerror or e}") from None
        output = _communicate(proc, self.deadline, self.cancelled)
        if output is None:
            raise TaskError(f"env_setup: {what} was stopped (cancelled or out of time)")
        if proc.returncode != 0:
            tail = output.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise TaskError(
                f"env_setup: {what} failed (exit {proc.returncode}): {' | '.join(tail)}"
            )
        return output.decode("utf-8", "replace")


def _communicate(
    proc: subprocess.Popen[bytes], deadline: float, cancelled: threading.Event
) -> bytes | None:
    while True:
        try:
            out, _ = proc.communicate(timeout=0.1)
            return out
        except subprocess.TimeoutExpired:
            if cancelled.is_set() or time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                return None


def _mkdir(setup: _Setup, step: dict[str, Any]) -> dict[str, Any]:
    path = make_dirs(setup.directory, step.get("path"), "'path'")  # type: ignore[arg-type]
    return {"path": str(path)}


def _write_file(setup: _Setup, step: dict[str, Any]) -> dict[str, Any]:
    content = step.get("content")
    if not isinstance(content, str):
        raise TaskError("env_setup: write_file needs 'content' (a string)")
    data = content.encode()
    if len(data) > MAX_FILE_BYTES:
        raise TaskError(f"env_setup: write_file content is larger than {MAX_FILE_BYTES} bytes")
    path = setup.path(step)
    with atomic_file(setup.directory, step["path"], "'path'") as out:
        out.write(data)
    if step.get("executable"):
        path.chmod(0o755)
    return {"path": str(path), "bytes": len(data)}


def _venv(setup: _Setup, step: dict[str, Any]) -> dict[str, Any]:
    path = setup.path(step)
    make_dirs(setup.directory, step["path"], "'path'")
    argv = [sys.executable, "-m", "venv"]
    if not step.get("pip", False):
        argv.append("--without-pip")
    if step.get("system_site_packages", False):
        argv.append("--system-site-packages")
    setup.command([*argv, str(path)], "creating the virtual environment")
    return {"path": str(path), "python": str(path / "bin" / "python"), "pip": bool(step.get("pip"))}


def _pip_install(setup: _Setup, step: dict[str, Any]) -> dict[str, Any]:
    packages = step.get("packages")
    if (
        not isinstance(packages, list)
        or not packages
        or not all(isinstance(p, str) and _PACKAGE.match(p) for p in packages)
    ):
        raise TaskError(
            "env_setup: pip_install needs 'packages': a list of names, each optionally ==version"
        )
    venv, wheels = setup.path(step, "venv"), setup.path(step, "find_links")
    python = venv / "bin" / "python"
    if not python.exists():
        raise TaskError(f"env_setup: pip_install: no virtual environment at {step['venv']!r}")
    if not wheels.is_dir() or wheels.is_symlink():
        raise TaskError(
            f"env_setup: pip_install: find_links {step['find_links']!r} is not a directory"
        )
    argv = [str(python), "-m", "pip", "install", "--no-index", "--only-binary=:all:"]
    argv += ["--find-links", str(wheels), "--no-input", "--disable-pip-version-check", "--"]
    setup.command([*argv, *packages], "pip install")
    return {"venv": str(venv), "packages": packages}


def _check_python(setup: _Setup, step: dict[str, Any]) -> dict[str, Any]:
    minimum = step.get("min_version", "3")
    if not isinstance(minimum, str) or not _VERSION.match(minimum):
        raise TaskError("env_setup: check_python 'min_version' must look like '3.11'")
    python = Path(sys.executable)
    if step.get("venv") is not None:
        python = setup.path(step, "venv") / "bin" / "python"
    code = "import sys; print('.'.join(map(str, sys.version_info[:3])))"
    version = setup.command([str(python), "-c", code], "checking the Python version").strip()
    have = tuple(int(x) for x in version.split("."))
    want = tuple(int(x) for x in minimum.split("."))
    if have[: len(want)] < want:
        raise TaskError(f"env_setup: Python {version} at {python} is older than {minimum}")
    return {"python": str(python), "version": version}


STEPS: dict[str, Callable[[_Setup, dict[str, Any]], dict[str, Any]]] = {
    "mkdir": _mkdir,
    "write_file": _write_file,
    "venv": _venv,
    "pip_install": _pip_install,
    "check_python": _check_python,
}


def run(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    steps = payload.get("steps", [])
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        raise TaskError(f"env_setup: 'steps' must be a list of at most {MAX_STEPS} steps")
    for i, step in enumerate(steps, 1):
        kind = step.get("step") if isinstance(step, dict) else None
        if kind not in STEPS:
            allowed = ", ".join(sorted(STEPS))
            raise TaskError(
                f"env_setup: step {i} ({kind!r}) is not allowed; allowed steps: {allowed}"
            )
    timeout = payload.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise TaskError("env_setup: 'timeout' must be a positive number of seconds")
    remaining = context.remaining()
    deadline = time.monotonic() + (timeout if remaining is None else min(timeout, remaining))
    try:
        directory = make_dirs(context.sandbox, payload.get("directory"), "'directory'")  # type: ignore[arg-type]
        setup = _Setup(directory, deadline, context.cancelled)
        done = []
        for i, step in enumerate(steps, 1):
            if context.cancelled.is_set():
                raise TaskError(f"env_setup: cancelled before step {i}")
            done.append({"step": step["step"], **STEPS[step["step"]](setup, step)})
    except PathError as e:
        raise TaskError(f"env_setup: {e}") from None
    except OSError as e:
        raise TaskError(f"env_setup: {e.strerror or e}") from None
    venvs = [s["python"] for s in done if s["step"] == "venv"]
    return {
        "directory": str(directory),
        "python": venvs[-1] if venvs else sys.executable,
        "steps": done,
    }
