"""What the fault harness runs its system on: a private RabbitMQ node and watched processes.

``PrivateBroker`` is a RabbitMQ node of the harness's own (its own node name, ports,
Erlang cookie, data and log directories under a temporary directory), so the run can
stop and restart it without touching the machine's shared broker. ``Managed`` is a
process the harness starts, may kill on purpose and restarts; an exit it did not
cause is recorded with the tail of the process's log.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matchmaker import identity
from membership.agent import free_port

ROOT = Path(__file__).resolve().parent.parent
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")  # the Debian package's scripts, without its su wrapper


class FaultEnvError(RuntimeError):
    """The harness could not set up what it runs on; the text says what and why."""


def _rabbit_tool(name: str) -> str:
    path = RABBIT_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FaultEnvError(f"{name} is not installed (apt-get install rabbitmq-server)")
    return found


@dataclass
class PrivateBroker:
    """A RabbitMQ node of its own on free loopback ports, under ``workdir``."""

    workdir: Path
    node: str = field(default_factory=lambda: f"mm-fault-{secrets.token_hex(4)}@localhost")
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    vhost: str = "mm-fault"
    user: str = "mm-fault"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.vhost}"

    def env(self) -> dict[str, str]:
        base = self.workdir
        return {
            **os.environ,
            "HOME": str(base),  # its own Erlang cookie, shared with rabbitmqctl
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-rabbit queue_index_max_journal_entries 2048",
        }

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 90.0) -> str:
        """``rabbitmqctl -n <node> args``; FaultEnvError with its first error line."""
        try:
            done = subprocess.run(
                [_rabbit_tool("rabbitmqctl"), "-n", self.node, "-q", *args],
                input=stdin, env=self.env(), capture_output=True, text=True, timeout=timeout,
                check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as error:
            first = (error.stderr or error.stdout or "").strip().splitlines()[:1]
            raise FaultEnvError(f"rabbitmqctl {args[0]} failed: {''.join(first)}") from None
        except subprocess.TimeoutExpired:
            raise FaultEnvError(f"rabbitmqctl {args[0]} did not answer in {timeout:g}s") from None
        return done.stdout

    def start(self) -> PrivateBroker:
        """Start the node, wait for it, make the vhost and a user with rights on it alone."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # consumer events: the scheduler finds a killed worker through the broker
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_event_exchange].\n")
        (self.workdir / "rabbitmq.conf").write_text(
            "# the fault harness's private node: defaults\n"
        )
        log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [_rabbit_tool("rabbitmq-server")], env=self.env(), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        try:
            self.ctl("wait", str(self.workdir / "rabbit.pid"), "--timeout", "90", timeout=120)
            self.ctl("add_vhost", self.vhost)
            self.ctl("add_user", self.user, self.password)
            self.ctl("set_permissions", "-p", self.vhost, self.user, ".*", ".*", ".*")
            events = identity.events_role(self.user)  # amq.rabbitmq.event lives in "/"
            self.ctl("set_permissions", "-p", "/", self.user, events.configure, events.write,
                     events.read)  # fmt: skip
        except FaultEnvError as error:
            self.stop()
            tail = self.log_tail()
            raise FaultEnvError(
                f"the private RabbitMQ node did not start: {error}\n{tail}"
            ) from None
        return self

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", "60")

    def queue_depths(self) -> dict[str, int]:
        """Messages (ready and unacknowledged) per queue of the vhost."""
        out = self.ctl("list_queues", "-p", self.vhost, "name", "messages", "--no-table-headers")
        depths = {}
        for line in out.splitlines():
            name, _, count = line.rpartition("\t")
            if name and count.isdigit():
                depths[name] = int(count)
        return depths

    def stop(self) -> None:
        """Stop the node (rabbitmqctl stop, SIGKILL after a bound)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(FaultEnvError):
                self.ctl("stop", timeout=60)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.workdir / "server.log").read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Exit:
    """A process exit the harness did not cause."""

    name: str
    code: int | None
    at: float
    tail: str


@dataclass
class Managed:
    """A process the harness starts, kills on purpose (``kill``) and restarts; any other
    exit is recorded (``unexpected``) by ``check_exit`` and the process started again."""

    name: str
    args: Sequence[str]
    log: Path
    env: Mapping[str, str]
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    unexpected: list[Exit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    log_offset: int = 0

    def start(self) -> None:
        """Start (again): same command line, its output appended to the same log."""
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                [sys.executable, *self.args], cwd=ROOT, env={**self.env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, restart: bool = True) -> None:
        """kill -9 on purpose (not counted as an unexpected exit), then start again."""
        with self.lock:
            if self.popen is not None and self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
            self.kills += 1
            if restart:
                self.start()

    def check_exit(self, restart_after: float = 1.0) -> Exit | None:
        """If it exited without the harness killing it: record that, start it again."""
        with self.lock:
            if self.popen is None or self.popen.poll() is None:
                return None
            gone = Exit(self.name, self.popen.returncode, time.time(), self.tail())
            self.unexpected.append(gone)
            time.sleep(restart_after)
            self.start()
            return gone

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code, None if killed."""
        with self.lock:
            if self.popen is None:
                return None
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    return self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
                    return None
            return self.popen.returncode

    def tail(self, lines: int = 12) -> str:
        """The end of this incarnation's output."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def child_pids(pid: int, command: str) -> list[int]:
    """Live children of ``pid`` whose command name is ``command`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        if name == command and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def send_signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
