"""How a push worker is seen: its Serf tags, on its own agent or on an existing one.

The tags follow membership's schema (``membership.tags.encode_worker_tags``)::

    role=worker  q=mm.worker.<name>  caps=a,b  slots=4  <attr>=<value> ...

and must fit Serf's 512 bytes; a worker whose tags do not fit or are unsafe
is refused at start-up. When the worker starts draining it advertises
``slots=0``, so the scheduler sends it no more work. ``OwnAgent`` starts a ``serf agent``
(``membership.agent.SerfAgent``) carrying the tags and, on ``leave()``, makes
it leave the pool gracefully. That agent also dies with the worker process
(PDEATHSIG): a worker killed outright is then seen as failed, never as alive.
``ExistingAgent`` sets the tags over RPC (``membership.rpc.SerfRPC``) on an
agent the worker does not own and removes them on ``leave()``.

Restarts keep the member's address: the agent's state lives in
``<sandbox>/.serf-agents/<name>/`` (0700, locked while a worker uses it), and
an agent started without a fixed ``--serf-bind`` reuses the gossip port
recorded there, unless the last one left gracefully (Serf accepts a left
member's name at a new address). Serf refuses a known member name at a new address (the new
agent loses the name-conflict vote and quits, or stays unseen if the old
member has failed), so the same address is what lets a worker killed outright
rejoin under its name. A watchdog notices when the agent dies: it restarts it
(same ports, current tags) a few times, and otherwise calls ``on_lost`` so
the worker stops instead of consuming while invisible.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from matchmaker.wire.broker import worker_queue
from membership.agent import LOOPBACK, SerfAgent
from membership.errors import MembershipError, SerfConnectionError
from membership.rpc import SerfRPC, split_addr
from membership.tags import SLOTS, encode_worker_tags
from workers.config import WorkerConfig

log = logging.getLogger(__name__)

RPC_TIMEOUT = 5.0
AGENT_DIR = ".serf-agents"
WATCH_INTERVAL = 0.5
JOIN_RETRY = 2.0  # seconds between joins while no peer answered
JOIN_TELL = 30.0  # seconds between warnings that it still has none
RESTARTS = 3  # agent restarts allowed within RESTART_WINDOW before the worker stops
RESTART_WINDOW = 60.0
LEFT_MARK = "left"  # the last agent left gracefully: any free port will do
CONFLICT = "name conflict resolution"  # the agent's log when it lost a name-conflict vote


class PresenceError(RuntimeError):
    """The worker cannot advertise itself; the text says why."""


def worker_tags(config: WorkerConfig) -> dict[str, str]:
    """The worker's Serf tags; PresenceError if they are unsafe or over Serf's 512 bytes."""
    try:
        return encode_worker_tags(
            config.name,
            config.capabilities,
            config.slots,
            config.attributes,
            queue=worker_queue(config.name),
            perf=config.perf,
        )
    except MembershipError as error:
        raise PresenceError(str(error)) from None


def _address(text: str | None, what: str) -> tuple[str, int | None]:
    if text is None:
        return LOOPBACK, None
    try:
        return split_addr(text)
    except ValueError:
        raise PresenceError(f"{what} {text!r} must be host:port, e.g. 127.0.0.1:7946") from None


def agent_dir(config: WorkerConfig) -> Path:
    """Where the worker's own agent keeps its config and log, reused across restarts."""
    return config.sandbox / AGENT_DIR / config.name


def recorded_port(workdir: Path, node: str, host: str) -> int | None:
    """The gossip port the agent in ``workdir`` last bound on ``host``, if any."""
    try:
        bind = json.loads((workdir / f"{node}.json").read_text())["bind"]
        recorded_host, port = split_addr(bind)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return port if recorded_host == host else None


class OwnAgent:
    """The worker's own ``serf agent`` carrying its tags, watched and restarted if it dies."""

    def __init__(self, config: WorkerConfig, tags: Mapping[str, str]) -> None:
        assert config.serf is not None
        serf = config.serf
        self.name = config.name
        self.workdir = agent_dir(config)
        bind_host, bind_port = _address(serf.bind, "--serf-bind")
        rpc_host, rpc_port = _address(serf.rpc_bind, "--serf-rpc-bind")
        recorded = recorded_port(self.workdir, config.name, bind_host)
        left = (self.workdir / LEFT_MARK).exists()  # Serf accepts a left member's name anywhere
        self.reused_port = None if bind_port or left else recorded
        self.on_lost: Callable[[str], None] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._restarts: list[float] = []
        self._told_unjoined = self._tried_join = 0.0
        try:
            self.agent = SerfAgent(
                config.name,
                tags=tags,
                bind_port=bind_port or self.reused_port,
                rpc_port=rpc_port,
                profile=serf.profile,
                advertise=serf.advertise,
                encrypt_key=serf.encrypt,
                rpc_auth=serf.auth,
                join=serf.join,
                workdir=self.workdir,
                log_level="warn",
                bind_host=bind_host,
                rpc_host=rpc_host,
                die_with_parent=True,
                insecure=serf.insecure,
                join_later=True,  # no peer up yet (a host booting first): retried, no exit
            )
        except MembershipError as error:
            raise PresenceError(str(error)) from None

    def start(self) -> None:
        self._lock()
        try:
            self.agent.start()
        except MembershipError as error:
            self.agent.stop()
            self._unlock()
            raise PresenceError(self._why_not_started(error)) from None
        log.info(
            "serf agent up node=%s bind=%s rpc=%s join=%s state=%s",
            self.agent.node,
            self.agent.bind_addr,
            self.agent.rpc_addr,
            ",".join(self.agent.join) or "-",
            self.workdir,
        )
        if self.agent.unjoined:
            self._told_unjoined = time.monotonic()
            log.warning(
                "serf agent joined no peer yet (%s); retrying every %g s, unseen by the "
                "scheduler until then",
                self.agent.unjoined,
                JOIN_RETRY,
            )
        with contextlib.suppress(OSError):
            (self.workdir / LEFT_MARK).unlink(missing_ok=True)
        self._stopping.clear()
        self._watcher = threading.Thread(target=self._watch, name="serf-watchdog", daemon=True)
        self._watcher.start()

    def draining(self) -> None:
        self.agent.tags[SLOTS] = "0"  # a restarted agent keeps advertising the drain
        _set_tags(self.agent.rpc_addr, self.agent.rpc_auth, {SLOTS: "0"}, [])

    def advertise(self, slots: int) -> None:
        self.agent.tags[SLOTS] = str(slots)  # a restarted agent advertises what holds now
        _set_tags(self.agent.rpc_addr, self.agent.rpc_auth, {SLOTS: str(slots)}, [])

    def leave(self) -> None:
        """Leave the pool gracefully (the agent broadcasts its leave and exits)."""
        self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        if self.agent.running:
            self.agent.cleanup()
            log.info("left the gossip pool node=%s", self.agent.node)
            with contextlib.suppress(OSError):
                (self.workdir / LEFT_MARK).touch(mode=0o600)
        self._unlock()

    # -- the agent's directory and its lock -----------------------------------------------

    def _lock(self) -> None:
        try:
            self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.workdir.chmod(0o700)
            fd = os.open(self.workdir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise PresenceError(
                f"cannot use the Serf agent directory {self.workdir}: {error.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PresenceError(
                f"another worker named {self.name!r} is running with this sandbox root "
                f"(it holds {self.workdir / 'lock'})"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    def _why_not_started(self, error: MembershipError) -> str:
        tail = self.agent.log_tail(5)
        if self.reused_port and "address already in use" in tail:
            return (
                f"the Serf gossip port {self.agent.bind_addr} this worker used before (recorded "
                f"in {self.workdir}) is taken by another process; free it, or pass --serf-bind "
                "(a new address is accepted by the pool only once the old member is gone)"
            )
        if CONFLICT in tail:
            return self._conflict()
        return str(error).splitlines()[0]

    def _conflict(self) -> str:
        return (
            f"another Serf member named {self.name!r} is alive at another address, so this "
            "worker's agent gave up its name; stop that worker or use another --name"
        )

    # -- the watchdog ---------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL):
            if self.agent.running:
                why = self._join() if self.agent.unjoined else None
            else:
                why = self._revive()
            if why is None:
                continue
            log.error("serf agent lost: %s", why)
            if self.on_lost is not None:
                self.on_lost(why)
            return

    def _join(self) -> str | None:
        """Try the join addresses again, every ``JOIN_RETRY`` seconds; why the worker must
        stop (an address answered and refused), or None."""
        now = time.monotonic()
        if now - self._tried_join < JOIN_RETRY:
            return None
        self._tried_join = now
        try:
            unanswered = self.agent.join_again()
        except SerfConnectionError:
            return None  # the agent is gone: the next look revives it
        except MembershipError as error:
            return str(error).splitlines()[0]
        if unanswered is None:
            log.info("serf agent joined node=%s via %s", self.agent.node, ",".join(self.agent.join))
        elif now - self._told_unjoined >= JOIN_TELL:
            self._told_unjoined = now
            log.warning("serf agent still joined no peer (%s); retrying", unanswered)
        return None

    def _revive(self) -> str | None:
        """Restart the dead agent on its old ports; the reason it cannot be, or None."""
        tail = self.agent.log_tail(5)
        log.warning("serf agent node=%s exited; log tail:\n%s", self.agent.node, tail)
        if CONFLICT in tail:
            return self._conflict()
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
        if len(self._restarts) > RESTARTS:
            return (
                f"the Serf agent died {len(self._restarts)} times within {RESTART_WINDOW:g} s "
                f"(log: {self.agent.log_path})"
            )
        try:
            with contextlib.suppress(MembershipError):
                self.agent.kill()  # reap the dead process
            self.agent.start()
        except MembershipError as error:
            return f"the Serf agent died and could not be restarted: {self._why_not_started(error)}"
        log.warning("serf agent restarted node=%s bind=%s", self.agent.node, self.agent.bind_addr)
        return None


class ExistingAgent:
    """Tags set over RPC on an agent the worker does not own (``--serf-rpc``)."""

    def __init__(self, rpc: str, auth: str | None, tags: Mapping[str, str]) -> None:
        _address(rpc, "--serf-rpc")
        self.rpc, self.auth, self.tags = rpc, auth, dict(tags)

    def start(self) -> None:
        _set_tags(self.rpc, self.auth, self.tags, [])
        log.info("tags set on the serf agent at %s", self.rpc)

    def draining(self) -> None:
        _set_tags(self.rpc, self.auth, {SLOTS: "0"}, [])

    def advertise(self, slots: int) -> None:
        _set_tags(self.rpc, self.auth, {SLOTS: str(slots)}, [])

    def leave(self) -> None:
        _set_tags(self.rpc, self.auth, {}, list(self.tags))
        log.info("tags removed from the serf agent at %s", self.rpc)


def _set_tags(rpc: str, auth: str | None, tags: Mapping[str, str], delete: list[str]) -> None:
    try:
        with SerfRPC(rpc, auth, timeout=RPC_TIMEOUT) as client:
            client.tags(tags, delete)
    except MembershipError as error:
        raise PresenceError(str(error)) from None


def make_presence(config: WorkerConfig) -> OwnAgent | ExistingAgent | None:
    """The presence the configuration asks for (None in pull mode or without Serf)."""
    if config.serf is None:
        return None
    tags = worker_tags(config)
    if config.serf.rpc:
        return ExistingAgent(config.serf.rpc, config.serf.auth, tags)
    return OwnAgent(config, tags)
