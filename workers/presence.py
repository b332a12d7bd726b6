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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from matchmaker.broker import worker_queue
from membership.agent import LOOPBACK, SerfAgent
from membership.errors import MembershipError
from membership.rpc import SerfRPC, split_addr
from membership.tags import SLOTS, encode_worker_tags
from workers.config import WorkerConfig

log = logging.getLogger(__name__)

RPC_TIMEOUT = 5.0


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


class OwnAgent:
    """The worker's own ``serf agent`` carrying its tags."""

    def __init__(self, config: WorkerConfig, tags: Mapping[str, str]) -> None:
        assert config.serf is not None
        serf = config.serf
        bind_host, bind_port = _address(serf.bind, "--serf-bind")
        rpc_host, rpc_port = _address(serf.rpc_bind, "--serf-rpc-bind")
        try:
            self.agent = SerfAgent(
                config.name,
                tags=tags,
                bind_port=bind_port,
                rpc_port=rpc_port,
                profile=serf.profile,
                encrypt_key=serf.encrypt,
                rpc_auth=serf.auth,
                join=serf.join,
                log_level="warn",
                bind_host=bind_host,
                rpc_host=rpc_host,
                die_with_parent=True,
            )
        except MembershipError as error:
            raise PresenceError(str(error)) from None

    def start(self) -> None:
        try:
            self.agent.start()
        except MembershipError as error:
            self.agent.cleanup()
            raise PresenceError(str(error).splitlines()[0]) from None
        log.info(
            "serf agent up node=%s bind=%s rpc=%s join=%s",
            self.agent.node,
            self.agent.bind_addr,
            self.agent.rpc_addr,
            ",".join(self.agent.join) or "-",
        )

    def draining(self) -> None:
        _set_tags(self.agent.rpc_addr, self.agent.rpc_auth, {SLOTS: "0"}, [])

    def advertise(self, slots: int) -> None:
        _set_tags(self.agent.rpc_addr, self.agent.rpc_auth, {SLOTS: str(slots)}, [])

    def leave(self) -> None:
        """Leave the pool gracefully (the agent broadcasts its leave and exits)."""
        if self.agent.running:
            self.agent.cleanup()
            log.info("left the gossip pool node=%s", self.agent.node)


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
