"""``exec``: run one of the worker's configured commands, with arguments from the payload.

Payload::

    {"command": "align",                  # a name from the worker's [commands] table
     "args": ["-t", "4", "ref.fa"],       # optional: strings appended to its command line
     "directory": "exp-1"}                # optional, relative to the sandbox

The worker's configuration names the commands (``[commands] align =
["/usr/bin/bwa", "mem"]`` in its ``--config`` TOML); a payload can only pick
one of those names and append arguments: a name not configured is refused
before anything runs, and nothing goes through a shell. Arguments are at most
``MAX_ARGS`` strings of at most ``MAX_ARG_CHARS`` characters, no NUL byte.

The command runs as a process group of its own (a new session), in
``directory`` (made if missing; by default ``exec/<task id>``, inside the
sandbox by the rules of ``workers.tasks.paths``), with stdin closed and a
minimal environment: ``PATH``, ``HOME`` and ``TMPDIR`` (the directory),
``LANG``, and ``MM_TASK_ID``/``MM_ATTEMPT``, nothing of the worker's (no
broker URL or password). Its stdout and stderr are read as they come: both go
to the attempt's log (``context.log``, whose tail is kept with the result),
and the last ``STREAM_TAIL`` bytes of each are in the output. A cancel or the
deadline stops it for real: SIGTERM to the whole group, SIGKILL ``TERM_GRACE``
seconds later. When the command exits, whatever it left running in its group
is killed (a process that made a session of its own escapes this; a worker
that must contain everything runs under a service manager's cgroup).

Limits: the worker file's ``[limits]`` table (``check_limits``) caps each
command's address space (``memory``, RLIMIT_AS), CPU time (``cpu`` seconds,
RLIMIT_CPU), open files (``files``, RLIMIT_NOFILE) and the size of any file it
writes (``file_size``, RLIMIT_FSIZE), soft and hard alike. They are set by
util-linux's ``prlimit`` before it executes the command, so they hold from
the command's first instruction and its children inherit them; a command
that exceeds one is killed by the kernel (SIGKILL or SIGXCPU for CPU time,
SIGXFSZ for a file's size; over ``memory`` an allocation fails instead) and
the error names the limits.

Output: ``{"command", "exit_code": 0, "seconds", "stdout", "stderr"}``; a
non-zero exit, a signal or a stop fails the attempt with the last line of
stderr in the error.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from workers.registry import task
from workers.tasks.base import TaskContext, TaskError
from workers.tasks.paths import PathError, make_dirs

MAX_ARGS = 256
MAX_ARG_CHARS = 4096
STREAM_TAIL = 16 * 1024  # bytes of each stream kept in the output
TERM_GRACE = 2.0  # after SIGTERM, how long the group gets before SIGKILL
AFTER_EXIT = 1.0  # after the command exits, how long its pipes may stay open
POLL = 0.1
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
KEYS = frozenset({"command", "args", "directory"})
PRLIMIT = "/usr/bin/prlimit"


class Limit(NamedTuple):
    option: str  # prlimit's
    resource: int
    in_bytes: bool


LIMITS = {  # the [limits] keys
    "memory": Limit("--as", resource.RLIMIT_AS, True),
    "cpu": Limit("--cpu", resource.RLIMIT_CPU, False),
    "files": Limit("--nofile", resource.RLIMIT_NOFILE, False),
    "file_size": Limit("--fsize", resource.RLIMIT_FSIZE, True),
}
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_LIMIT = 1 << 62


def check_commands(commands: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """A worker's ``[commands]`` table, validated: name -> argv (an absolute path to an
    executable file, then fixed arguments); ValueError with one sentence otherwise."""
    from workers.registry import TASK_NAME

    checked = {}
    for name, argv in commands.items():
        if not TASK_NAME.fullmatch(name):
            raise ValueError(
                f"command name {name[:80]!r} must be 1-64 letters, digits and _ . - "
                "(starting with a letter or digit)"
            )
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and a and "\0" not in a for a in argv)
        ):
            raise ValueError(
                f"command {name!r} must be a non-empty list of strings, "
                'e.g. align = ["/usr/bin/bwa", "mem"]'
            )
        program = argv[0]
        if not os.path.isabs(program):
            raise ValueError(
                f"command {name!r}: {program!r} must be an absolute path (no PATH lookup)"
            )
        if not os.path.isfile(program) or not os.access(program, os.X_OK):
            raise ValueError(f"command {name!r}: {program} is not an executable file")
        checked[name] = tuple(argv)
    return checked


def _amount(name: str, value: Any, in_bytes: bool) -> int:
    if isinstance(value, str) and in_bytes:
        match = re.fullmatch(r"\s*(\d{1,19})\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
        if match:
            value = int(match[1]) * UNITS[match[2].upper()]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        unit = 'bytes (a whole number, or a string such as "2G")' if in_bytes else "a whole number"
        raise ValueError(f"limit {name!r} must be {unit} from 1 to 2**62 (got {str(value)[:40]!r})")
    return value


def check_limits(limits: Mapping[str, Any]) -> dict[str, int]:
    """A worker's ``[limits]`` table, validated: name -> a positive whole number (bytes
    for ``memory`` and ``file_size``, which may be written ``"512M"``, ``"2G"``);
    ValueError with one sentence otherwise, or if ``prlimit`` is missing."""
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise ValueError(
            f"unknown limit(s) {', '.join(unknown)[:120]} (known: {', '.join(LIMITS)})"
        )
    checked = {name: _amount(name, value, LIMITS[name].in_bytes) for name, value in limits.items()}
    if checked and not os.access(PRLIMIT, os.X_OK):
        raise ValueError(f"[limits] needs {PRLIMIT} (Debian's util-linux package)")
    for name, value in checked.items():
        _, hard = resource.getrlimit(LIMITS[name].resource)
        if hard != resource.RLIM_INFINITY and value > hard and os.geteuid() != 0:
            raise ValueError(
                f"limit {name!r} {value} is above this worker's own hard limit {hard}, "
                "which only root may raise"
            )
    return checked


def limited(argv: list[str], limits: Mapping[str, int]) -> list[str]:
    """``argv`` under ``limits``: prlimit sets them, then executes the command."""
    if not limits:
        return argv
    options = [f"{LIMITS[name].option}={value}" for name, value in sorted(limits.items())]
    return [PRLIMIT, *options, "--", *argv]


def _arguments(payload: dict[str, Any]) -> list[str]:
    args = payload.get("args", [])
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise TaskError(f"exec: 'args' must be a list of at most {MAX_ARGS} strings")
    for n, arg in enumerate(args):
        if not isinstance(arg, str) or len(arg) > MAX_ARG_CHARS or "\0" in arg:
            raise TaskError(
                f"exec: args[{n}] must be a string of at most {MAX_ARG_CHARS} characters "
                "without a NUL byte"
            )
    return args


class _Stream:
    """One pipe of the command: decoded into the log as it comes, its tail kept."""

    def __init__(self, name: str, context: TaskContext) -> None:
        self.name = name
        self.context = context
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.tail = b""

    def feed(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-STREAM_TAIL:]
        self.context.log.write(self.decoder.decode(data))

    def text(self) -> str:
        return self.tail.decode("utf-8", "replace")


def _kill(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exited(pid: int) -> bool:
    """Whether the process has exited, without reaping it (its group id stays taken)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _run(
    proc: subprocess.Popen[bytes], context: TaskContext
) -> tuple[str | None, _Stream, _Stream]:
    """Read the command's output until it ends; why it was stopped (None if it was not)."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Stream("stdout", context), _Stream("stderr", context)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, out)
    selector.register(proc.stderr, selectors.EVENT_READ, err)
    stopped: str | None = None
    term_at = exit_at = 0.0
    try:
        while True:
            for key, _ in selector.select(POLL):
                data = os.read(key.fd, 65536)
                if data:
                    key.data.feed(data)
                else:
                    selector.unregister(key.fileobj)
            now = time.monotonic()
            if _exited(proc.pid):
                if not exit_at:
                    exit_at = now
                    _kill(proc.pid, signal.SIGKILL)  # what it left behind in its group
                if not selector.get_map() or now - exit_at > AFTER_EXIT:
                    break
            elif stopped is None:
                left = context.remaining()
                if context.cancelled.is_set():
                    stopped = "cancelled"
                elif left is not None and left <= 0:
                    stopped = "its deadline passed"
                if stopped is not None:
                    context.log.write(f"\n[exec: {stopped}; stopping the command]\n")
                    _kill(proc.pid, signal.SIGTERM)
                    term_at = now
            elif now - term_at > TERM_GRACE:
                _kill(proc.pid, signal.SIGKILL)
    finally:
        selector.close()
        proc.stdout.close()
        proc.stderr.close()
        proc.wait()
    return stopped, out, err


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@task("exec")
def run(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    extra = sorted(set(payload) - KEYS)
    if extra:
        raise TaskError(f"exec: unknown payload key(s) {', '.join(map(repr, extra))[:200]}")
    name = payload.get("command")
    if not isinstance(name, str) or name not in context.commands:
        known = ", ".join(sorted(context.commands)) or "none"
        raise TaskError(
            f"exec: command {str(name)[:80]!r} is not configured on worker {context.worker} "
            f"(configured: {known})"
        )
    argv = [*context.commands[name], *_arguments(payload)]
    try:
        where = payload.get("directory", f"exec/{context.task_id}")
        directory = make_dirs(context.sandbox, where, "'directory'")
    except PathError as error:
        raise TaskError(f"exec: {error}") from None
    except OSError as error:
        raise TaskError(f"exec: the directory: {error.strerror or error}") from None
    if context.cancelled.is_set():
        raise TaskError("exec: cancelled before the command started")
    env = {
        "PATH": SAFE_PATH,
        "HOME": str(directory),
        "TMPDIR": str(directory),
        "LANG": "C.UTF-8",
        "MM_TASK_ID": context.task_id,
        "MM_ATTEMPT": str(context.attempt),
    }
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            limited(argv, context.limits),
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as error:
        raise TaskError(f"exec: {name} could not start: {error.strerror or error}") from None
    stopped, out, err = _run(proc, context)
    seconds = round(time.monotonic() - started, 3)
    code = proc.returncode
    if stopped is not None:
        raise TaskError(f"exec: {name} was stopped after {seconds:g}s: {stopped}")
    if code != 0:
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with {code}"
        if code < 0 and context.limits:
            under = ", ".join(f"{k} {v}" for k, v in sorted(context.limits.items()))
            how += f" (limits: {under})"
        last = err.text().strip().splitlines()[-1:] or out.text().strip().splitlines()[-1:]
        raise TaskError(f"exec: {name} {how}" + (f": {last[0][:300]}" if last else ""))
    return {
        "command": name,
        "exit_code": code,
        "seconds": seconds,
        "stdout": out.text(),
        "stderr": err.text(),
    }
