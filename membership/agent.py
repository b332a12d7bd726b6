"""Start and stop a real ``serf agent`` process (on loopback unless told otherwise).

Everything the agent needs goes into one JSON config file (``-config-file``):
node name, gossip bind and RPC addresses, the address other members should
reach it at (``advertise``: a host behind NAT, or bound to 0.0.0.0), tags,
timing profile (``lan`` between hosts, ``local`` on loopback), join
addresses (unless joined later, over RPC), the gossip encryption key and the
RPC auth key (the agent has no flag for the latter, and a file keeps both
keys out of ``ps``).

An agent refuses to start without both keys unless it is made ``insecure``
(``membership.keys``). Its working directory is either given (a worker
reuses its own, keyed by its name) or a temporary ``serf-<node>-*`` one
holding an ``owner`` file with the creating and the agent's process ids; such
a directory whose processes are both gone is removed by the next agent that
makes one (``sweep_stale_workdirs``), so a killed process leaves nothing for
long.

Signals, as the agent handles them: SIGINT makes it leave the cluster
gracefully and exit; SIGKILL is a crash the others detect by probing.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from membership.errors import (
    AgentError,
    KeyFileError,
    SerfAuthError,
    SerfConnectionError,
    SerfError,
)
from membership.keys import INSECURE_HINT, check_auth_key, check_encrypt_key, write_secret
from membership.rpc import SerfRPC

LOOPBACK = "127.0.0.1"
PROFILES = ("lan", "wan", "local")
PORT_ATTEMPTS = 3  # starts of one agent, when a port of its own choosing was taken
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()  # ports free_port gave in this process
OWNER_FILE = "owner"
UNANSWERED = "dial tcp"  # Serf's join error when no agent answered at an address
JOIN_TIMEOUT = 30.0


def _below_ephemeral() -> range:
    """Ports below the kernel's ephemeral range: no outgoing connection takes one of them."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10_000, max(low, 10_001))


def free_port(host: str = LOOPBACK) -> int:
    """A port free for both TCP and UDP right now (gossip uses both).

    It is drawn below the ephemeral range, so the kernel cannot give it to an
    outgoing connection before the agent binds it (a port from ``bind(0)``
    could be), and never twice in this process.
    """
    choices = _below_ephemeral()
    for _ in range(200):
        port = random.choice(choices)
        if port in _handed_out:
            continue
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            try:
                tcp.bind((host, port))
                udp.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AgentError(f"no free TCP+UDP port found on {host}")


def generate_key(size: int = 32) -> str:
    """A gossip encryption key for ``-encrypt``: ``size`` (16, 24 or 32) random bytes, base64."""
    if size not in (16, 24, 32):
        raise ValueError("a Serf encryption key is 16, 24 or 32 bytes")
    return base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def _check_key(key: str) -> None:
    try:
        check_encrypt_key(key)
    except KeyFileError as error:
        raise AgentError(str(error)) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def sweep_stale_workdirs(root: Path | None = None) -> list[Path]:
    """Remove temporary agent directories under ``root`` whose processes are all gone."""
    root = root or Path(tempfile.gettempdir())
    removed = []
    for path in root.glob("serf-*"):
        try:
            if path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
            pids = [int(p) for p in (path / OWNER_FILE).read_text().split()]
        except (OSError, ValueError):
            continue  # not ours, or being made right now
        if pids and not any(_alive(pid) for pid in pids):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _die_with_parent() -> None:
    """In the agent's process before exec: get SIGKILL when the parent process dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class SerfAgent:
    """One ``serf agent`` process; ports default to free loopback ports.

    ``start()`` returns once the agent's RPC answers a members request;
    ``stop()`` leaves gracefully (SIGINT) and kills after ``stop_timeout``;
    ``kill()`` is ``kill -9``. With ``die_with_parent`` the agent gets SIGKILL
    when the process that started it dies (a worker killed outright must not
    keep looking alive). Without both ``encrypt_key`` and ``rpc_auth`` it is
    refused unless ``insecure``.

    ``join`` addresses are joined as the agent starts (Serf's ``start_join``: it
    exits when none answers), or with ``join_later`` over RPC once it runs: then
    when none answers it runs alone, ``unjoined`` says why and ``join_again()``
    tries again; an address that answers and refuses (another gossip key) is an
    ``AgentError`` either way.
    """

    def __init__(
        self,
        node: str,
        *,
        tags: Mapping[str, str] | None = None,
        bind_port: int | None = None,
        rpc_port: int | None = None,
        profile: str = "local",
        encrypt_key: str | None = None,
        rpc_auth: str | None = None,
        join: Iterable[str] = (),
        workdir: str | Path | None = None,
        log_level: str = "info",
        serf_bin: str = "serf",
        start_timeout: float = 10.0,
        stop_timeout: float = 8.0,
        bind_host: str = LOOPBACK,
        rpc_host: str = LOOPBACK,
        die_with_parent: bool = False,
        insecure: bool = False,
        advertise: str | None = None,
        join_later: bool = False,
    ) -> None:
        if profile not in PROFILES:
            raise AgentError(
                f"unknown Serf profile {profile!r}: choose one of {', '.join(PROFILES)}"
            )
        if encrypt_key is not None:
            _check_key(encrypt_key)
        if rpc_auth is not None:
            try:
                check_auth_key(rpc_auth)
            except KeyFileError as error:
                raise AgentError(str(error)) from None
        if not insecure and not (encrypt_key and rpc_auth):
            raise AgentError(INSECURE_HINT)
        self.node = node
        self.advertise = advertise
        self.bind_host = bind_host
        self.rpc_host = rpc_host
        self.die_with_parent = die_with_parent
        self.tags = dict(tags or {})
        self._own_ports = (bind_port is None, rpc_port is None)
        self.bind_port = bind_port or free_port(bind_host)
        self.rpc_port = rpc_port or free_port(rpc_host)
        self.profile = profile
        self.encrypt_key = encrypt_key
        self.rpc_auth = rpc_auth
        self.join = list(join)
        # join over RPC once running: an unanswered join leaves it running alone (why, in
        # ``unjoined``; ``join_again``), where Serf's own start-up join makes it exit
        self.join_later = join_later
        self.unjoined: str | None = None
        self.log_level = log_level
        self.serf_bin = serf_bin
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._own_workdir = workdir is None
        if workdir is None:
            sweep_stale_workdirs()
            workdir = tempfile.mkdtemp(prefix=f"serf-{node}-")
            (Path(workdir) / OWNER_FILE).write_text(f"{os.getpid()}\n")
        self.workdir = Path(workdir)
        self.config_path = self.workdir / f"{node}.json"
        self.log_path = self.workdir / f"{node}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bind_addr(self) -> str:
        return f"{self.bind_host}:{self.bind_port}"

    @property
    def rpc_addr(self) -> str:
        return f"{self.rpc_host}:{self.rpc_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def config(self) -> dict[str, object]:
        """The agent's JSON configuration."""
        config: dict[str, object] = {
            "node_name": self.node,
            "bind": self.bind_addr,
            "rpc_addr": self.rpc_addr,
            "profile": self.profile,
            "log_level": self.log_level,
            "tags": self.tags,
        }
        if self.advertise:
            config["advertise"] = self.advertise
        if self.join and not self.join_later:
            config["start_join"] = self.join
        if self.encrypt_key:
            config["encrypt_key"] = self.encrypt_key
        if self.rpc_auth:
            config["rpc_auth"] = self.rpc_auth
        return config

    def start(self) -> SerfAgent:
        """Start the agent; a port of its own choosing taken meanwhile is chosen again."""
        if self.running:
            return self
        if shutil.which(self.serf_bin) is None:
            raise AgentError(
                f"the {self.serf_bin!r} program is not installed (apt-get install serf)"
            )
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._launch()
                return self
            except AgentError:
                if attempt + 1 == PORT_ATTEMPTS or not self._repick_ports():
                    raise
        raise AssertionError("unreachable")

    def _repick_ports(self) -> bool:
        """New ports for the agent's own choices if its last start found one in use."""
        own_bind, own_rpc = self._own_ports
        if not (own_bind or own_rpc) or "address already in use" not in self.log_tail(5):
            return False
        if own_bind:
            self.bind_port = free_port(self.bind_host)
        if own_rpc:
            self.rpc_port = free_port(self.rpc_host)
        return True

    def _launch(self) -> None:
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        write_secret(self.config_path, json.dumps(self.config(), indent=2), replace=True)
        with open(self.log_path, "ab") as log_file:
            try:
                self.process = subprocess.Popen(
                    [self.serf_bin, "agent", f"-config-file={self.config_path}"],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                )
            except OSError as error:
                raise AgentError(
                    f"cannot start the Serf agent ({self.serf_bin}): {error}"
                ) from None
        if self._own_workdir:  # the directory is stale once both processes are gone
            owner = self.workdir / OWNER_FILE
            owner.write_text(f"{os.getpid()} {self.process.pid}\n")
        try:
            self._wait_until_ready()
            if self.join and self.join_later:
                self.join_again()
        except BaseException:
            self.kill()
            raise

    def join_again(self) -> str | None:
        """Join the ``join`` addresses over RPC: None once joined, else why no address
        answered (worth another try later). AgentError when one answered and refused
        (another gossip key, for one), which no retry fixes."""
        try:
            # longer than the agent's own dial timeout (10 s under ``lan``) to a silent host
            with SerfRPC(self.rpc_addr, self.rpc_auth, timeout=JOIN_TIMEOUT) as rpc:
                rpc.join(self.join)
        except (SerfAuthError, SerfConnectionError):
            raise  # not the join's answer: the agent itself (its key, or it is gone)
        except SerfError as error:
            failures = [line.strip(" \t*") for line in str(error).splitlines()]
            failures = [line for line in failures if line.startswith("Failed to join")]
            if failures and all(UNANSWERED in line for line in failures):
                self.unjoined = "; ".join(failures)
                return self.unjoined
            why = "; ".join(failures) or " ".join(str(error).split())
            raise AgentError(f"serf agent {self.node!r} could not join: {why}") from None
        self.unjoined = None
        return None

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise AgentError(
                    f"serf agent {self.node!r} exited with code {code} before its RPC answered; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                with SerfRPC(self.rpc_addr, self.rpc_auth, timeout=2.0) as rpc:
                    rpc.members()
                return
            except SerfAuthError:
                raise
            except SerfError as error:
                last = str(error)
            time.sleep(0.05)
        raise AgentError(
            f"serf agent {self.node!r} did not answer on {self.rpc_addr} within "
            f"{self.start_timeout:g} s ({last}); log tail:\n{self.log_tail()}"
        )

    def rpc(self, timeout: float = 10.0) -> SerfRPC:
        """A connected RPC client for this agent (close it, or use it in ``with``)."""
        return SerfRPC(self.rpc_addr, self.rpc_auth, timeout=timeout).connect()

    def leave(self) -> None:
        """Ask the agent to leave gracefully (SIGINT) without waiting; ``stop()`` waits."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """Leave gracefully (SIGINT) and wait; SIGKILL if it does not exit in time."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        self.leave()
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """``kill -9``: the agent vanishes without telling anyone."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def cleanup(self) -> None:
        """Stop the agent and remove its working directory if this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> SerfAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"SerfAgent({self.node!r}, bind={self.bind_addr}, rpc={self.rpc_addr})"
