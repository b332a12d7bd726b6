"""A whole matchmaker system on this machine, as real processes.

``LocalCluster`` starts, in a working directory of its own: the scheduler's
Serf agent (gossip encrypted, RPC authenticated, with keys it generates in
``<workdir>/keys``), the scheduler (``python -m matchmaker run``),
workers (``python -m workers``, each with its own Serf agent joined to the
scheduler's) and, on request, the local Aurora server. It talks to an
existing RabbitMQ through ``broker_url``. The demo, the live benchmark and
the integration tests all use it; ``stop()`` ends everything it started.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from matchmaker import identity
from matchmaker.config import Config
from matchmaker.ledger import LedgerError, TaskLedger, TaskRow, open_url
from matchmaker.messages import Single, TaskRequest, encode
from matchmaker.wire import broker
from membership.agent import SerfAgent, free_port
from membership.keys import AUTH_FILE, ENCRYPT_FILE, keygen, read_key_file

ROOT = Path(__file__).resolve().parents[2]


class ClusterError(RuntimeError):
    """A process of the local cluster did not come up; the text says which and why."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        self.signal(signal.SIGTERM)
        self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> None:
        """Wait for the exit; kill -9 after ``timeout``."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalCluster:
    broker_url: str = broker.DEFAULT_URL
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mm-cluster-")))
    round_interval: float = Config.round_interval
    encrypt_key: str = field(default="", init=False)  # from <workdir>/keys, made at first use
    auth_key: str = field(default="", init=False)
    scheduler_args: tuple[str, ...] = ()
    trusted_users: tuple[str, ...] | None = None  # None: the user of ``broker_url`` (dev setup)
    agent: SerfAgent | None = None
    scheduler: Process | None = None
    standby: Process | None = None
    workers: dict[str, Process] = field(default_factory=dict)
    aurora: Process | None = None
    aurora_url: str = ""
    ledger_url: str = ""  # empty: the SQLite file in ``state_dir``

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.keys_dir / ENCRYPT_FILE).exists():
            keygen(self.keys_dir)
        self.encrypt_key = read_key_file(self.keys_dir / ENCRYPT_FILE, "gossip key")
        self.auth_key = read_key_file(self.keys_dir / AUTH_FILE, "RPC auth key")

    @property
    def keys_dir(self) -> Path:
        return self.workdir / "keys"

    @property
    def key_args(self) -> list[str]:
        """The flags that give a worker the cluster's Serf keys (files, not values)."""
        return [
            "--serf-encrypt-file", str(self.keys_dir / ENCRYPT_FILE),
            "--serf-auth-file", str(self.keys_dir / AUTH_FILE),
        ]  # fmt: skip

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    # -- processes ------------------------------------------------------------------

    def _broker_args(self, url: str | None) -> list[str]:
        """``--broker-url`` without its password and ``--broker-password-file`` (0600, in the
        working directory): no password on a command line."""
        url = url or self.broker_url
        password = urllib.parse.urlsplit(url).password
        if password is None:
            return ["--broker-url", url]
        user = broker.sender(url)
        secret = self.workdir / "secrets" / f"{user}.password"
        identity.write_secret(secret, urllib.parse.unquote(password))
        bare = ",".join(identity.with_password(one, None) for one in broker.split_urls(url))
        return ["--broker-url", bare, "--broker-password-file", str(secret)]

    def _ledger_args(self) -> list[str]:
        """``--ledger-url`` without its password, which goes to a 0600 passfile."""
        if not self.ledger_url:
            return []
        parts = urllib.parse.urlsplit(self.ledger_url)
        if parts.password is None:
            return ["--ledger-url", self.ledger_url]
        netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return ["--ledger-url", urllib.parse.urlunsplit(parts._replace(netloc=netloc))]

    def _ledger_env(self) -> dict[str, str]:
        """``PGPASSFILE`` for a PostgreSQL ledger URL with a password (libpq reads it)."""
        parts = urllib.parse.urlsplit(self.ledger_url)
        if not self.ledger_url or parts.password is None:
            return {}
        fields = (
            parts.hostname or "localhost",
            str(parts.port or 5432),
            parts.path.lstrip("/") or "*",
            urllib.parse.unquote(parts.username or ""),
            urllib.parse.unquote(parts.password),
        )
        line = ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields)
        passfile = self.workdir / "secrets" / "pgpass"
        identity.write_secret(passfile, line)  # it adds the newline
        return {"PGPASSFILE": str(passfile)}

    @property
    def aurora_token_file(self) -> Path:
        """The local Aurora server's token, generated in its state directory at its start."""
        return self.workdir / "aurora-state" / "api-token"

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Process:
        log = self.workdir / f"{name}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if self.aurora_url:  # the job_submission task sends it with every call
            environment["MM_AURORA_TOKEN_FILE"] = str(self.aurora_token_file)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        return Process(name, popen, log)

    def start_agent(self) -> SerfAgent:
        if self.agent is None:
            self.agent = SerfAgent(
                "scheduler",
                tags={"role": "scheduler"},
                encrypt_key=self.encrypt_key,
                rpc_auth=self.auth_key,
                workdir=self.workdir / "serf-scheduler",
            ).start()
        return self.agent

    def start_scheduler(
        self,
        *,
        standby: bool = False,
        wait: bool = True,
        broker_url: str | None = None,
        state_dir: Path | None = None,
    ) -> Process:
        """The scheduler (or a standby); ``state_dir`` other than the cluster's plays a
        scheduler on another host (sharing only a PostgreSQL ``ledger_url``)."""
        agent = self.start_agent()
        trusted = self.trusted_users
        if trusted is None:
            trusted = (broker.sender(self.broker_url),)
        args = [
            "-m", "matchmaker", "run",
            *self._broker_args(broker_url),
            "--trusted-users", ",".join(trusted),
            "--serf-rpc", agent.rpc_addr,
            "--serf-auth-key-file", str(self.keys_dir / AUTH_FILE),
            "--state-dir", str(state_dir or self.state_dir),
            "--round-interval", str(self.round_interval),
            *self.scheduler_args,
        ]  # fmt: skip
        args += self._ledger_args()
        process = self._spawn(
            "scheduler-standby" if standby else "scheduler", args, self._ledger_env()
        )
        if standby:
            self.standby = process
        else:
            self.scheduler = process
        if wait:
            self.wait_log(process, "this scheduler is active", 30)
        return process

    def start_worker(
        self,
        name: str,
        caps: Iterable[str],
        slots: int = 2,
        attributes: Mapping[str, Any] | None = None,
        *,
        mode: str = "push",
        wait: bool = True,
        extra: Iterable[str] = (),
        broker_url: str | None = None,
    ) -> Process:
        args = [
            "-m", "workers",
            "--name", name,
            "--caps", ",".join(caps),
            "--slots", str(slots),
            "--mode", mode,
            *self._broker_args(broker_url),
            "--sandbox", str(self.workdir / "sandbox"),
            *extra,
        ]  # fmt: skip
        for key, value in (attributes or {}).items():
            args += ["--attr", f"{key}={value}"]
        if self.aurora_url:
            args += ["--aurora-url", self.aurora_url]
        if mode == "push":
            agent = self.start_agent()
            args += ["--serf-join", agent.bind_addr, *self.key_args]
        process = self._spawn(f"worker-{name}", args)
        self.workers[name] = process
        if wait and mode == "push":
            self.wait_for_worker(name, present=True)
        return process

    def start_aurora(self) -> str:
        port = free_port()
        self.aurora = self._spawn(
            "aurora",
            [
                "-m", "aurora.local", "--port", str(port),
                "--sandbox-root", str(self.workdir / "aurora"),
                "--state-dir", str(self.aurora_token_file.parent),
            ],
        )  # fmt: skip
        self.aurora_url = f"http://127.0.0.1:{port}"
        self.wait_log(self.aurora, "ready at", 20)
        return self.aurora_url

    def stop(self) -> None:
        """Workers first (they drain and leave the pool); then, together, the schedulers, the
        Aurora server and the scheduler's agent (which leaves the pool too)."""
        _stop_together(self.workers.values())
        if self.agent is not None:
            self.agent.leave()
        _stop_together([self.standby, self.scheduler, self.aurora])
        if self.agent is not None:
            self.agent.cleanup()
            self.agent = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- waiting ------------------------------------------------------------------------

    def wait_log(self, process: Process, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in process.log.read_text(errors="replace"):
                return
            if not process.alive():
                raise ClusterError(f"{process.name} exited early:\n{process.tail()}")
            time.sleep(0.05)
        raise ClusterError(
            f"{process.name} did not log {text!r} in {timeout:g}s:\n{process.tail()}"
        )

    def wait_for_worker(self, name: str, present: bool, timeout: float = 20.0) -> None:
        from membership.table import fetch_workers

        agent = self.start_agent()
        wait_until(
            lambda: (
                any(
                    r.name == name and r.status == "alive"
                    for r in fetch_workers(agent.rpc_addr, self.auth_key)
                )
                == present
            ),
            timeout,
            f"worker {name} {'joining' if present else 'leaving'} the Serf pool",
        )

    # -- the system's interfaces --------------------------------------------------------

    def send(self, messages: Iterable[Single]) -> None:
        """Publish to mm.requests, as the CLI does."""
        broker.send_requests(self.broker_url, map(encode, messages))

    def submit(self, *requests: TaskRequest) -> list[str]:
        self.send(requests)
        return [r.id for r in requests]

    def ledger(self) -> TaskLedger:
        return open_url(self.ledger_url, self.state_dir, readonly=True)

    def task(self, task_id: str) -> TaskRow | None:
        try:
            ledger = self.ledger()
        except LedgerError:
            return None
        try:
            return ledger.get(task_id)
        finally:
            ledger.close()

    def wait_states(
        self, ids: Iterable[str], states: Iterable[str] = ("succeeded",), timeout: float = 60.0
    ) -> dict[str, TaskRow]:
        """Wait until every task is in one of ``states``; returns their rows."""
        wanted, ids = set(states), list(ids)
        rows: dict[str, TaskRow] = {}

        def done() -> bool:
            for task_id in ids:
                row = self.task(task_id)
                if row is None or row.state not in wanted:
                    return False
                rows[task_id] = row
            return True

        wait_until(done, timeout, f"tasks reaching {sorted(wanted)}", self._diagnose(ids))
        return rows

    def _diagnose(self, ids: list[str]) -> Callable[[], str]:
        def text() -> str:
            states = {
                i: (r.state, r.worker, r.reason) if (r := self.task(i)) else None for i in ids
            }
            logs = self.scheduler.tail() if self.scheduler else ""
            return f"states: {json.dumps(states, default=str)[:2000]}\nscheduler log:\n{logs}"

        return text


def _stop_together(processes: Iterable[Process | None]) -> None:
    running = [p for p in processes if p is not None]
    for process in running:
        process.signal(signal.SIGTERM)
    for process in running:
        process.wait()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _FileServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (a stager refusing an oversize file) is no error


@contextlib.contextmanager
def storage_site(directory: Path) -> Iterator[str]:
    """A directory served over plain HTTP on loopback (a storage site); yields its URL."""
    handler = functools.partial(_QuietFiles, directory=str(directory))
    server = _FileServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    diagnose: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise ClusterError(
        f"timed out after {timeout:g}s waiting for {what}" + (f"\n{diagnose()}" if diagnose else "")
    )
