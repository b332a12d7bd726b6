"""What the fault harness runs its system on: a private RabbitMQ node and watched processes.

``PrivateBroker`` is a RabbitMQ node of the harness's own (a ``rabbit_node.RabbitNode``:
its own node name, ports, Erlang cookie, data and log directories under a temporary
directory) with a vhost and a user of its own, so the run can stop and restart it
without touching the machine's shared broker. ``Managed`` is a process the harness
starts, may kill on purpose and restarts; an exit it did not cause is recorded with the
tail of the process's log.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.rabbit_node import RabbitNode, RabbitNodeError
from matchmaker import identity

ROOT = Path(__file__).resolve().parent.parent


class FaultEnvError(RuntimeError):
    """The harness could not set up what it runs on; the text says what and why."""


@dataclass
class PrivateBroker:
    """A RabbitMQ node of its own on free loopback ports, under ``workdir``. ``start``
    fails with a FaultEnvError, the other methods with the node's RabbitNodeError."""

    workdir: Path
    vhost: str = "mm-fault"
    user: str = "mm-fault"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    rabbit: RabbitNode = field(init=False)

    def __post_init__(self) -> None:
        self.rabbit = RabbitNode(
            f"mm-fault-{secrets.token_hex(4)}@localhost",
            self.workdir,
            conf=("# the fault harness's private node: defaults",),
            # consumer events: the scheduler finds a killed worker through the broker
            plugins=("rabbitmq_event_exchange",),
            erl_args="-rabbit queue_index_max_journal_entries 2048",
        )

    @property
    def node(self) -> str:
        return self.rabbit.name

    @property
    def port(self) -> int | None:
        return self.rabbit.port

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.vhost}"

    def start(self) -> PrivateBroker:
        """Start the node, wait for it, make the vhost and a user with rights on it alone."""
        ctl = self.rabbit.ctl
        try:
            self.rabbit.launch()
            self.rabbit.wait(90)
            ctl("add_vhost", self.vhost)
            ctl("add_user", self.user, self.password)
            ctl("set_permissions", "-p", self.vhost, self.user, ".*", ".*", ".*")
            events = identity.events_role(self.user)  # amq.rabbitmq.event lives in "/"
            ctl("set_permissions", "-p", "/", self.user, events.configure, events.write,
                events.read)  # fmt: skip
        except RabbitNodeError as error:
            self.stop()
            raise FaultEnvError(f"the private RabbitMQ node did not start: {error}") from None
        return self

    def stop_app(self) -> None:
        self.rabbit.ctl("stop_app")

    def start_app(self) -> None:
        self.rabbit.ctl("start_app")
        self.rabbit.ctl("await_startup", "--timeout", "60")

    def queue_depths(self) -> dict[str, int]:
        """Messages (ready and unacknowledged) per queue of the vhost."""
        out = self.rabbit.ctl(
            "list_queues", "-p", self.vhost, "name", "messages", "--no-table-headers"
        )
        depths = {}
        for line in out.splitlines():
            name, _, count = line.rpartition("\t")
            if name and count.isdigit():
                depths[name] = int(count)
        return depths

    def stop(self) -> None:
        """Stop the node (rabbitmqctl stop, SIGKILL after a bound)."""
        self.rabbit.stop()


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
