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

Only interpreters the worker trusts run: its own, or that of an environment
a ``venv`` step of this worker process made (``ENVIRONMENTS`` records its
interpreter's real path, which must be the worker's own base interpreter,
and the step refuses a path that already exists). A step naming any other
``venv`` is refused, and so is one whose interpreter no longer resolves to
what was recorded; the recorded file is what is executed. No step makes a
file executable nor writes inside a recorded environment. Interpreters run
isolated (``-I``: no current directory or ``PYTHON*`` variables on the path)
with a minimal environment (``PATH``, ``HOME`` = the sandbox, ``LANG``, pip's
offline settings): nothing of the worker's own, such as broker credentials.
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

from workers.registry import task
from workers.tasks.base import TaskContext, TaskError
from workers.tasks.paths import PathError, atomic_file, make_dirs, parts_of

DEFAULT_TIMEOUT = 600.0
MAX_STEPS = 100
MAX_FILE_BYTES = 1 << 20
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PACKAGE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:==[A-Za-z0-9.+!_-]+)?$")
_VERSION = re.compile(r"^\d+(?:\.\d+){0,2}$")


def _real(path: Path | str) -> str:
    return os.path.realpath(path)


class Environments:
    """The virtual environments this worker process made: real directory -> the real
    path of its interpreter, recorded when the ``venv`` step made it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, str] = {}

    def record(self, venv: Path) -> str:
        """Record ``venv`` (just made); its interpreter's real path, which must be ours."""
        python = _real(venv / "bin" / "python")
        if python != _real(getattr(sys, "_base_executable", sys.executable)):
            raise TaskError(f"env_setup: the new environment's interpreter is {python}, not ours")
        with self._lock:
            self._made[_real(venv)] = python
        return python

    def interpreter(self, venv: Path, name: str) -> str:
        """The recorded interpreter of ``venv``; TaskError unless it is one of ours, intact."""
        with self._lock:
            recorded = self._made.get(_real(venv))
        if recorded is None:
            raise TaskError(
                f"env_setup: {name!r} is not a virtual environment this worker made; "
                f"make it with a 'venv' step first"
            )
        if _real(venv / "bin" / "python") != recorded:
            raise TaskError(
                f"env_setup: the interpreter of {name!r} is no longer the one this worker "
                f"made; refusing to run it"
            )
        return recorded

    def holding(self, path: Path) -> str | None:
        """The recorded environment ``path`` lies in (or is), if any (its last component
        is not resolved: a link there is what a write would replace)."""
        real = os.path.join(_real(path.parent), path.name)
        with self._lock:
            made = list(self._made)
        return next((v for v in made if real == v or real.startswith(v + os.sep)), None)


ENVIRONMENTS = Environments()


class _Setup:
    """One env_setup run: the experiment directory, the deadline, the cancel flag, and the
    worker's sandbox (the commands' ``HOME``)."""

    def __init__(
        self, directory: Path, deadline: float, cancelled: threading.Event, home: Path
    ) -> None:
        self.directory = directory
        self.deadline = deadline
        self.cancelled = cancelled
        self.home = home

    def path(self, step: dict[str, Any], key: str = "path") -> Path:
        return self.directory.joinpath(*parts_of(step.get(key), f"'{key}'"))

    def writable(self, step: dict[str, Any]) -> Path:
        """The step's ``path``, refused if it lies inside an environment the worker made."""
        path = self.path(step)
        if ENVIRONMENTS.holding(path) is not None:
            raise TaskError(
                f"env_setup: 'path' {step['path']!r} is inside a virtual environment this "
                f"worker made; its files are not to be changed"
            )
        return path

    def environment(self) -> dict[str, str]:
        """The whole environment of a command: nothing taken from the worker's."""
        return {
            "PATH": SAFE_PATH,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INDEX": "1",
            "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def command(self, argv: list[str], what: str, executable: str | None = None) -> str:
        """Run ``argv`` (no shell; ``executable`` is the file run, if not ``argv[0]``) in
        the experiment directory; its output, or TaskError."""
        if self.cancelled.is_set():
            raise TaskError("env_setup: cancelled")
        try:
            proc = subprocess.Popen(
                argv,
                executable=executable,
                cwd=self.directory,
                env=self.environment(),
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
    setup.writable(step)
    path = make_dirs(setup.directory, step["path"], "'path'")
    return {"path": str(path)}


def _write_file(setup: _Setup, step: dict[str, Any]) -> dict[str, Any]:
    if step.get("executable"):
        raise TaskError(
            "env_setup: write_file cannot make a file executable; run a script through "
            "its interpreter instead (e.g. 'sh run.sh')"
        )
    content = step.get("content")
    if not isinstance(content, str):
        raise TaskError("env_setup: write_file needs 'content' (a string)")
    data = content.encode()
    if len(data) > MAX_FILE_BYTES:
        raise TaskError(f"env_setup: write_file content is larger than {MAX_FILE_BYTES} bytes")
    path = setup.writable(step)
    with atomic_file(setup.directory, step["path"], "'path'") as out:
        out.write(data)
    return {"path": str(path), "bytes": len(data)}


def _venv(setup: _Setup, step: dict[str, Any]) -> dict[str, Any]:
    path = setup.path(step)
    if os.path.lexists(path) and ENVIRONMENTS.holding(path) != _real(path):
        raise TaskError(
            f"env_setup: venv 'path' {step['path']!r} already exists and is not an environment "
            f"this worker process made; choose a new path"
        )
    make_dirs(setup.directory, step["path"], "'path'")
    argv = [sys.executable, "-I", "-m", "venv", "--symlinks"]
    if not step.get("pip", False):
        argv.append("--without-pip")
    if step.get("system_site_packages", False):
        argv.append("--system-site-packages")
    setup.command([*argv, str(path)], "creating the virtual environment")
    ENVIRONMENTS.record(path)
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
    real = ENVIRONMENTS.interpreter(venv, step["venv"])
    if not wheels.is_dir() or wheels.is_symlink():
        raise TaskError(
            f"env_setup: pip_install: find_links {step['find_links']!r} is not a directory"
        )
    python = str(venv / "bin" / "python")  # argv[0] tells the interpreter its environment
    argv = [python, "-I", "-m", "pip", "install", "--no-index", "--only-binary=:all:"]
    argv += ["--find-links", str(wheels), "--no-input", "--disable-pip-version-check", "--"]
    setup.command([*argv, *packages], "pip install", executable=real)
    return {"venv": str(venv), "packages": packages}


def _check_python(setup: _Setup, step: dict[str, Any]) -> dict[str, Any]:
    minimum = step.get("min_version", "3")
    if not isinstance(minimum, str) or not _VERSION.match(minimum):
        raise TaskError("env_setup: check_python 'min_version' must look like '3.11'")
    python, real = Path(sys.executable), sys.executable
    if step.get("venv") is not None:
        venv = setup.path(step, "venv")
        real = ENVIRONMENTS.interpreter(venv, step["venv"])
        python = venv / "bin" / "python"
    code = "import sys; print('.'.join(map(str, sys.version_info[:3])))"
    argv = [str(python), "-I", "-c", code]
    version = setup.command(argv, "checking the Python version", executable=real).strip()
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


@task("env_setup")
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
        setup = _Setup(directory, deadline, context.cancelled, context.sandbox)
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
