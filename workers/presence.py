"""How a push worker is seen: its Serf tags, on its own agent or on an existing one.

Tags (Serf limits all of a member's tags to 512 bytes together)::

    role=worker  q=mm.worker.<name>  caps=a,b  slots=4  <attr>=<value> ...

``OwnAgent`` starts a ``serf agent`` carrying the tags and, on ``leave()``,
makes it leave the pool gracefully (SIGINT: the agent broadcasts its leave
and exits); the agent dies with the worker process (PDEATHSIG), so a worker
killed outright shows up as failed, not alive. ``ExistingAgent`` sets the tags
on an agent given by its RPC address and removes them on ``leave()``.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import msgpack

from matchmaker.broker import worker_queue
from workers.config import WorkerConfig

log = logging.getLogger(__name__)

SERF = "serf"
MAX_TAG_BYTES = 512
START_TIMEOUT = 10.0
LEAVE_TIMEOUT = 10.0


class PresenceError(RuntimeError):
    """The worker cannot advertise itself; the text says why."""


def worker_tags(config: WorkerConfig) -> dict[str, str]:
    """The worker's Serf tags; PresenceError if they would not fit Serf's 512 bytes."""
    tags = {
        "role": "worker",
        "q": worker_queue(config.name),
        "caps": ",".join(config.capabilities),
        "slots": str(config.slots),
        **config.attributes,
    }
    size = len(msgpack.packb(tags)) + 1  # Serf prefixes the encoded tags with a magic byte
    if size > MAX_TAG_BYTES:
        raise PresenceError(
            f"the worker's Serf tags take {size} bytes, over Serf's {MAX_TAG_BYTES}-byte limit; "
            "use fewer or shorter capabilities and attributes"
        )
    return tags


def free_port() -> int:
    """A loopback port free for both TCP and UDP right now (Serf gossips on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise PresenceError("no free loopback port for the Serf agent")


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the worker process dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _rpc_args(rpc: str, auth: str | None) -> list[str]:
    return [f"-rpc-addr={rpc}", *([f"-rpc-auth={auth}"] if auth else [])]


class OwnAgent:
    """A ``serf agent`` child process carrying the worker's tags."""

    def __init__(self, config: WorkerConfig, tags: dict[str, str]) -> None:
        serf = config.serf
        assert serf is not None
        self.name = config.name
        self.tags = tags
        self.bind = serf.bind or f"127.0.0.1:{free_port()}"
        self.rpc = serf.rpc_bind or f"127.0.0.1:{free_port()}"
        self.join = serf.join
        self.encrypt = serf.encrypt
        self.auth = serf.auth
        self.profile = serf.profile
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    def command(self) -> list[str]:
        argv = [SERF, "agent", f"-node={self.name}", f"-bind={self.bind}", f"-rpc-addr={self.rpc}"]
        argv += [f"-profile={self.profile}", "-log-level=warn"]
        argv += [f"-tag={key}={value}" for key, value in self.tags.items()]
        if self.encrypt:
            argv.append(f"-encrypt={self.encrypt}")
        if self.auth:
            argv.append(f"-rpc-auth={self.auth}")
        argv += [f"-join={address}" for address in self.join]
        return argv

    def start(self) -> None:
        with tempfile.NamedTemporaryFile(
            prefix=f"serf-{self.name}-", suffix=".log", delete=False
        ) as f:
            self._log = Path(f.name)
        with self._log.open("wb") as out:
            try:
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            except OSError as error:
                raise PresenceError(f"cannot start the Serf agent ({SERF}): {error}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PresenceError(f"the Serf agent exited at start-up: {self._tail()}")
            if self._answers():
                log.info(
                    "serf agent up node=%s bind=%s rpc=%s join=%s",
                    self.name,
                    self.bind,
                    self.rpc,
                    ",".join(self.join) or "-",
                )
                return
            time.sleep(0.05)
        self._kill()
        raise PresenceError(
            f"the Serf agent did not answer on {self.rpc} within {START_TIMEOUT:g}s"
        )

    def _answers(self) -> bool:
        probe = [SERF, "members", *_rpc_args(self.rpc, self.auth)]
        try:
            done = subprocess.run(probe, capture_output=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def _tail(self) -> str:
        text = self._log.read_text(errors="replace").strip() if self._log else ""
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "no output"

    def leave(self) -> None:
        """Leave the pool gracefully: SIGINT makes the agent broadcast its leave and exit."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(LEAVE_TIMEOUT)
            log.info("left the gossip pool node=%s", self.name)
        except subprocess.TimeoutExpired:
            log.warning("serf agent did not leave within %gs; killing it", LEAVE_TIMEOUT)
            self._kill()
        finally:
            if self._log is not None:
                self._log.unlink(missing_ok=True)

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ExistingAgent:
    """Tags set over RPC on an agent the worker does not own (``--serf-rpc``)."""

    def __init__(self, rpc: str, auth: str | None, tags: dict[str, str]) -> None:
        self.rpc, self.auth, self.tags = rpc, auth, tags

    def _tags(self, *args: str) -> None:
        argv = [SERF, "tags", *_rpc_args(self.rpc, self.auth), *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PresenceError(f"cannot reach the Serf agent at {self.rpc}: {error}") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit {done.returncode}"
            if reason.startswith("Error connecting to Serf agent"):
                raise PresenceError(f"cannot reach the Serf agent at {self.rpc}: {reason}")
            raise PresenceError(f"the Serf agent at {self.rpc} refused the worker's tags: {reason}")

    def start(self) -> None:
        args = [arg for key, value in self.tags.items() for arg in ("-set", f"{key}={value}")]
        self._tags(*args)
        log.info("tags set on the serf agent at %s", self.rpc)

    def leave(self) -> None:
        self._tags(*[arg for key in self.tags for arg in ("-delete", key)])
        log.info("tags removed from the serf agent at %s", self.rpc)


def make_presence(config: WorkerConfig) -> OwnAgent | ExistingAgent | None:
    """The presence the configuration asks for (None in pull mode or without Serf)."""
    if config.serf is None:
        return None
    tags = worker_tags(config)
    if config.serf.rpc:
        return ExistingAgent(config.serf.rpc, config.serf.auth, tags)
    return OwnAgent(config, tags)
