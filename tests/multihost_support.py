"""Servers and processes on ``netns_support`` hosts, for the multi-host test.

``Postgres`` is a PostgreSQL server of its own on one host (its data directory in a
temporary directory the ``postgres`` user may enter; it listens on the host's address
only, passwords checked with SCRAM), with one database and one role owning it.
``spawn`` starts a Python module on a host (``ip netns exec``) with its output in a
log file; the returned ``matchmaker.devtools.cluster.Process`` is what the test kills or waits on.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from matchmaker.devtools.cluster import Process
from tests.netns_support import SUBNET, Host

ROOT = Path(__file__).resolve().parent.parent
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))  # Debian's, one per version


class ServerError(RuntimeError):
    """A server did not start; the text has its log's tail."""


def spawn(
    host: Host,
    name: str,
    args: Sequence[str],
    logdir: Path,
    env: Mapping[str, str] | None = None,
) -> Process:
    """``python args...`` on ``host``, from the repository root, output to ``<name>.log``."""
    log = logdir / f"{name}.log"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [*host.prefix, sys.executable, *args], cwd=ROOT, env=environment,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Process(name, popen, log)


def _pg_tool(name: str) -> str:
    for directory in reversed(PG_BINS):  # the newest version first
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise ServerError(f"{name} is not installed (apt-get install postgresql)")
    return found


@dataclass
class Postgres:
    """A PostgreSQL server on ``host``, database and role ``mm``."""

    host: Host
    port: int = 5432
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mm-netns-pg-")))
    process: subprocess.Popen[bytes] | None = None
    keep_log: Path | None = None  # where stop() copies the server's log (lock waits included)

    @property
    def url(self) -> str:
        return f"postgresql://mm:{self.password}@{self.host.address}:{self.port}/mm"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_postgres(self, *command: str, stdin: str | None = None, timeout: float = 60.0) -> str:
        done = subprocess.run(
            [*self.host.prefix, "runuser", "-u", "postgres", "--", *command],
            input=stdin, capture_output=True, text=True, timeout=timeout, cwd=self.root,
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerError(f"{command[0]} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def start(self) -> Postgres:
        user = pwd.getpwnam("postgres")
        self.root.chmod(0o755)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self._as_postgres(
            _pg_tool("initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
        )  # fmt: skip
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 scram-sha-256\n")
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            [*self.host.prefix, "runuser", "-u", "postgres", "--", _pg_tool("postgres"),
             "-D", str(self.data), "-p", str(self.port),
             "-c", f"listen_addresses={self.host.address}",
             "-c", f"unix_socket_directories={self.root}", "-c", "log_lock_waits=on"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.root,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run(
                [*self.host.prefix, _pg_tool("pg_isready"), "-q", "-U", "postgres",
                 "-h", str(self.root), "-p", str(self.port)],
                capture_output=True, timeout=10,
            )  # fmt: skip
            if ready.returncode == 0:
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"PostgreSQL did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        self.psql(f"CREATE ROLE mm LOGIN PASSWORD '{self.password}'")
        self.psql("CREATE DATABASE mm OWNER mm")
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` (on stdin: no password in ``ps``) as the superuser over the server's
        socket; its output, unaligned."""
        return self._as_postgres(
            _pg_tool("psql"), "-h", str(self.root), "-p", str(self.port), "-d", database,
            "-v", "ON_ERROR_STOP=1", "-At", "-f", "-", stdin=sql,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run(
                [*self.host.prefix, "runuser", "-u", "postgres", "--", _pg_tool("pg_ctl"),
                 "stop", "-D", str(self.data), "-m", "immediate"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.keep_log is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.root / "server.log", self.keep_log)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def logged_after(log: Path, text: str, after: float) -> float | None:
    """When ``log`` (lines stamped ``YYYY-MM-DD HH:MM:SS,mmm`` in local time) first said
    ``text`` after the epoch time ``after``; None if it has not."""
    for line in log.read_text(errors="replace").splitlines():
        if text not in line:
            continue
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if stamp > after:
            return stamp
    return None
