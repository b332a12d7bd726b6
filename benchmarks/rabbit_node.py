"""A RabbitMQ node of a test's or harness's own, beside the machine's shared broker.

A ``RabbitNode`` keeps everything of its own under its working directory: its home
(where the node and ``rabbitmqctl`` find its Erlang cookie), its config lines
(``conf``), enabled plugins, data, logs and pid file; it has its own node name and
distribution port, and an AMQP port unless its config says the listeners. It may run
behind a ``prefix`` such as ``ip netns exec h1`` (inside a network namespace, then
under a long name such as ``rabbit@10.99.0.11``). ``ctl`` runs ``rabbitmqctl`` against
it with that environment; ``launch`` and ``wait`` start it, ``stop`` stops it
(``rabbitmqctl stop``, then SIGKILL of its process group after a bound) and ``kill``
crashes it. The tools are the Debian package's own scripts in ``/usr/lib/rabbitmq/bin``
(the ``/usr/sbin`` wrappers switch to the rabbitmq user, who cannot read a temporary
directory), else those on PATH. The fault harness (``fault_env.PrivateBroker``), the
test clusters (``rabbit_cluster``) and the TLS tests each start their nodes with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from membership.agent import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")  # the Debian package's scripts, without its su wrapper


class RabbitNodeError(RuntimeError):
    """A node could not be started or did not answer; the text says which node and why."""


def rabbit_tool(name: str) -> str:
    """The path of a RabbitMQ tool (``rabbitmq-server``, ``rabbitmqctl``)."""
    own = RABBIT_BIN / name
    found = str(own) if own.exists() else shutil.which(name)
    if found is None:
        raise RabbitNodeError(f"{name} is not installed (apt-get install rabbitmq-server)")
    return found


@dataclass
class RabbitNode:
    """One node: ``name`` (``short@localhost`` or, with ``longnames``, ``rabbit@<ip>``)
    listening on ``host:port`` (no AMQP port of its own when ``port`` is None: ``conf``
    says the listeners), its files under ``workdir``, its commands run behind ``prefix``
    (empty, or ``ip netns exec <ns>``). Every field is JSON-serialisable (a node started
    by one process can be stopped by another)."""

    name: str
    workdir: Path
    cookie: str = field(default_factory=lambda: secrets.token_hex(20))
    host: str = "127.0.0.1"
    port: int | None = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    prefix: tuple[str, ...] = ()
    longnames: bool = False
    conf: tuple[str, ...] = ()  # the lines of its rabbitmq.conf
    plugins: tuple[str, ...] = ()  # enabled
    erl_args: str = ""  # RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS
    pid: int | None = None  # the process group of the running server

    @property
    def pid_file(self) -> Path:
        return self.workdir / "rabbit.pid"

    def env(self) -> dict[str, str]:
        base = self.workdir
        env = {
            **os.environ,
            "HOME": str(base),  # the cookie, shared with rabbitmqctl
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_USE_LONGNAME": "true" if self.longnames else "false",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
            "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),
        }
        if self.port is not None:
            env["RABBITMQ_NODE_IP_ADDRESS"] = self.host
            env["RABBITMQ_NODE_PORT"] = str(self.port)
        if self.erl_args:
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = self.erl_args
        return env

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 90.0) -> str:
        """``rabbitmqctl -n <node> -q args`` (behind the prefix), ``stdin`` its input;
        RabbitNodeError with its first error line, or if it does not answer in time."""
        longnames = ["-l"] if self.longnames else []
        command = [*self.prefix, rabbit_tool("rabbitmqctl"), *longnames, "-n", self.name, "-q"]
        try:
            done = subprocess.run(
                [*command, *args], input=stdin or "", env=self.env(), cwd=self.workdir,
                capture_output=True, text=True, timeout=timeout, check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as error:
            lines = (error.stderr or error.stdout or "").strip().splitlines()
            why = next((line for line in lines if line.strip()), "no output")
            raise RabbitNodeError(f"rabbitmqctl {args[0]} on {self.name} failed: {why}") from None
        except subprocess.TimeoutExpired:
            raise RabbitNodeError(
                f"rabbitmqctl {args[0]} on {self.name} did not answer in {timeout:g}s"
            ) from None
        return done.stdout

    def launch(self) -> None:
        """Write its files and start the server process (``wait`` waits for it)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cookie = self.workdir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        (self.workdir / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (self.workdir / "rabbitmq.conf").write_text("".join(f"{line}\n" for line in self.conf))
        (self.workdir / "rabbitmq-env.conf").write_text("")  # not the machine's
        self.pid_file.unlink(missing_ok=True)
        with (self.workdir / "server.log").open("ab") as log:
            process = subprocess.Popen(
                [*self.prefix, rabbit_tool("rabbitmq-server")], env=self.env(), cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid = process.pid

    def wait(self, timeout: float = 120.0) -> None:
        """Until the node's application runs (its pid file, ``rabbitmqctl wait`` on it,
        ``await_startup``); RabbitNodeError with its log's tail if not, at once if the
        server exits before it wrote its pid file."""
        deadline = time.monotonic() + timeout

        def left() -> str:
            return str(max(1, int(deadline - time.monotonic())))

        try:
            while not self.pid_file.exists():
                if not self.alive():
                    raise RabbitNodeError(f"{self.name} exited at start")
                if time.monotonic() > deadline:
                    raise RabbitNodeError(f"{self.name} wrote no pid file in {timeout:g}s")
                time.sleep(0.2)
            self.ctl("wait", str(self.pid_file), "--timeout", left(), timeout=timeout + 30)
            self.ctl("await_startup", "--timeout", left(), timeout=timeout + 30)
        except RabbitNodeError as error:
            raise RabbitNodeError(f"{error}\n{self.log_tail()}") from None

    def alive(self) -> bool:
        """Whether anything of the server's process group is left."""
        if self.pid is None:
            return False
        self._reap()
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """``kill -9`` of the node's whole process group: a crash, no goodbye."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._reap()

    def stop(self, bound: float = 20.0) -> None:
        """Stop the node (``rabbitmqctl stop``, SIGKILL after ``bound`` seconds)."""
        if not self.alive():
            return
        with contextlib.suppress(RabbitNodeError):
            self.ctl("stop", timeout=60)
        deadline = time.monotonic() + bound
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill()

    def _reap(self) -> None:
        """Collect the server's exit if this process started it (else nothing to do)."""
        assert self.pid is not None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.workdir / "server.log").read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])
