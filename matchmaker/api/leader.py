"""Where the active scheduler's API is: advertised as a Serf tag, found by a standby.

The active scheduler sets the tag ``mm-api`` on its Serf agent to ``host:port@since``
(its ``http_bind``, its ``http_port`` and when it became active, Unix seconds) each time
it takes the lead, and deletes it when it stops, if the tag is still its own. A standby's
API, asked for anything the active one serves, looks at the alive members' ``mm-api``
tags and answers with a redirect (307, which keeps the method and the body) to the newest
one; a leader that died without deleting its tag is older than the one that took over,
so its tag loses. A wildcard bind (``0.0.0.0``, ``::``) is advertised as the member's own
gossip address. The newest tag being this scheduler's own (it leads, but its first
snapshot is not out yet), or no tag at all, leaves the answer a 503.

Tags are untrusted input like every tag: a value that does not parse is ignored. Nothing
here ever stops the loop: a Serf agent that cannot be reached is logged and skipped.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from membership.errors import MembershipError
from membership.rpc import Member, SerfRPC

log = logging.getLogger("matchmaker.api")

TAG = "mm-api"
WILDCARDS = ("0.0.0.0", "::", "")
CACHE_SECONDS = 1.0
RPC_TIMEOUT = 3.0


@dataclass(frozen=True)
class Advert:
    where: str  # host:port
    since: float


def own_address(config: Any) -> str:
    host = config.http_bind
    return f"[{host}]:{config.http_port}" if ":" in host else f"{host}:{config.http_port}"


def parse(member: Member) -> Advert | None:
    """The member's ``mm-api`` tag, or None if it has none or it does not parse."""
    value = member.tags.get(TAG)
    if not value or len(value) > 300:
        return None
    where, sep, since = value.rpartition("@")
    host, colon, port = where.rpartition(":")
    try:
        stamp, number = float(since), int(port)
    except ValueError:
        return None
    if not sep or not colon or not 0 < number < 65536 or stamp != stamp:
        return None
    host = host.strip("[]")
    if host in WILDCARDS:
        host = member.addr.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None  # an address, not a name: nothing to resolve, nothing to spoof by DNS
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    return Advert(f"{shown}:{number}", stamp)


class Leader:
    """The advertising (by the active scheduler) and the finding (by a standby's API)."""

    def __init__(self, config: Any) -> None:
        self.rpc_addr = config.serf_rpc
        self.auth_key = getattr(config, "serf_auth_key", "") or None
        self.own = own_address(config)
        self.value: str | None = None
        self._cache: tuple[float, str | None] = (0.0, None)
        self._lock = threading.Lock()

    def _rpc(self) -> SerfRPC:
        return SerfRPC(self.rpc_addr, self.auth_key, timeout=RPC_TIMEOUT).connect()

    def lead(self) -> None:
        """This scheduler became active: its tag says so."""
        self.value = f"{self.own}@{time.time():.3f}"
        try:
            with self._rpc() as rpc:
                rpc.tags({TAG: self.value})
        except (MembershipError, OSError) as error:
            log.warning("cannot advertise the API on the Serf agent: %s", error)

    def resign(self) -> None:
        """This scheduler stops: its tag goes, unless another scheduler's replaced it."""
        if self.value is None:
            return
        try:
            with self._rpc() as rpc:
                name = rpc.stats().get("agent", {}).get("name")
                mine = [m for m in rpc.members() if m.name == name]
                if mine and mine[0].tags.get(TAG) == self.value:
                    rpc.tags(delete=[TAG])
        except (MembershipError, OSError) as error:
            log.warning("cannot withdraw the API's tag from the Serf agent: %s", error)
        self.value = None

    def find(self) -> str | None:
        """The active scheduler's API (host:port) if it is another's, else None."""
        with self._lock:
            at, found = self._cache
            if time.monotonic() - at < CACHE_SECONDS:
                return found
            try:
                with self._rpc() as rpc:
                    members = rpc.members()
            except (MembershipError, OSError) as error:
                log.warning("cannot ask the Serf agent for the leader: %s", error)
                members = []
            adverts = [a for m in members if m.status == "alive" and (a := parse(m))]
            newest = max(adverts, key=lambda a: a.since, default=None)
            found = None if newest is None or newest.where == self.own else newest.where
            self._cache = (time.monotonic(), found)
            return found
