"""The live worker inventory, fed by one Serf agent's RPC event stream.

Model: the inventory holds every member that advertises valid worker tags and
is alive. It opens the member-event stream first, then takes a members
snapshot and applies it, then applies the queued events in arrival order. An
event older than the snapshot can only repeat what the snapshot already shows
or be overtaken by a later event in the same queue, so the result converges
to the agent's view and no change is lost.

Each event is read as "member X is now in state S with tags T"; the
inventory emits a ``Change`` only when a live worker appears, changes or goes
away. A member whose tags are rejected is logged with the reason (once per
distinct tag set) and kept out. When the connection drops, the inventory
reconnects with exponential backoff, takes a fresh snapshot and diffs it
against what it held, so a worker that died meanwhile is reported.

The agent coalesces member events (it holds them until a second passes
without another, up to three seconds) and drops events for a client that
reads too slowly. So the inventory also reconciles with a fresh members list
every ``resync`` seconds (0 disables): changes show up within about
``resync`` seconds, and a dropped event cannot leave it wrong for longer.

All state changes and ``on_change`` calls happen on one thread at a time
(the inventory's own thread after ``start()`` returns); readers take a lock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from membership.errors import MembershipError, TagError
from membership.rpc import MEMBER_EVENTS, Member, SerfRPC, parse_members
from membership.tags import Advertised, decode_worker

ChangeKind = Literal["joined", "updated", "left", "failed", "reaped", "rejected"]

# A member's state after each stream event, and for each status in a snapshot.
_EVENT_STATE = {
    "member-join": "alive",
    "member-update": "alive",
    "member-leave": "left",
    "member-failed": "failed",
    "member-reap": "reaped",
}
_STATUS_STATE = {"alive": "alive", "leaving": "left", "left": "left", "failed": "failed"}
_GONE_KIND: dict[str, ChangeKind] = {"left": "left", "failed": "failed", "reaped": "reaped"}
_LOST = object()


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """A worker in the inventory: what it advertises, its queue, its Serf status and address."""

    worker: Advertised
    queue: str
    status: str = "alive"
    addr: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """One inventory change. ``worker`` is the worker as it is now, or as it was if it went away."""

    kind: ChangeKind
    name: str
    worker: Advertised | None
    reason: str | None = None

    @property
    def gone(self) -> bool:
        """A worker that was live is no longer: its assigned tasks must be rescheduled."""
        return self.kind in ("left", "failed", "reaped") or (
            self.kind == "rejected" and self.worker is not None
        )


class Inventory:
    """Live workers by name, from the Serf agent at ``rpc_addr``."""

    def __init__(
        self,
        rpc_addr: str,
        auth_key: str | None = None,
        on_change: Callable[[Change], None] | None = None,
        logger: logging.Logger | None = None,
        *,
        timeout: float = 5.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        resync: float = 0.5,
    ) -> None:
        self.rpc_addr = rpc_addr
        self.auth_key = auth_key
        self.on_change = on_change
        self.log = logger or logging.getLogger(__name__)
        self.timeout = timeout
        self.backoff = backoff
        self.resync = resync
        self._live: dict[str, LiveWorker] = {}
        self._rejected: dict[str, tuple[frozenset[tuple[str, str]], str]] = {}
        self._version = 0
        self._cond = threading.Condition()
        self._events: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._generation = 0
        self._rpc: SerfRPC | None = None
        self._connected = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public view --------------------------------------------------------

    def start(self) -> Inventory:
        """Connect, authenticate, load the members and follow the stream in the background."""
        self._stopping.clear()
        self._connect()
        self._thread = threading.Thread(target=self._run, name="serf-inventory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._events.put((-1, _LOST))
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
            self._thread = None
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None
        self._connected = False

    def __enter__(self) -> Inventory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def version(self) -> int:
        """Incremented on every change; equal versions mean an unchanged inventory."""
        with self._cond:
            return self._version

    @property
    def connected(self) -> bool:
        """False while the RPC connection is down and the inventory may be stale."""
        return self._connected

    def snapshot(self) -> dict[str, LiveWorker]:
        with self._cond:
            return dict(self._live)

    def rejected(self) -> dict[str, str]:
        """Members kept out of the inventory, with the reason."""
        with self._cond:
            return {name: reason for name, (_, reason) in self._rejected.items()}

    def wait_for(self, predicate: Callable[[dict[str, LiveWorker]], bool], timeout: float) -> bool:
        """Block until ``predicate(snapshot)`` holds (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(dict(self._live)), timeout)

    # -- connection ---------------------------------------------------------

    def _connect(self) -> None:
        self._generation += 1
        generation = self._generation

        def lost(error: BaseException | None) -> None:
            self._events.put((generation, _LOST))

        def record(rec: dict[str, Any]) -> None:
            self._events.put((generation, rec))

        rpc = SerfRPC(self.rpc_addr, self.auth_key, timeout=self.timeout, on_close=lost)
        rpc.connect()
        try:
            rpc.stream(MEMBER_EVENTS, record)
            members = rpc.members()
        except BaseException:
            rpc.close()
            raise
        old, self._rpc = self._rpc, rpc
        if old is not None:
            old.close()
        self._connected = True
        self._publish(self._reconcile(members))

    def _reconnect(self) -> None:
        self._connected = False
        self.log.warning("lost the Serf RPC connection to %s; reconnecting", self.rpc_addr)
        delay, attempts = self.backoff[0], 0
        while not self._stopping.is_set():
            attempts += 1
            try:
                self._connect()
            except Exception as error:
                log = self.log.warning if attempts == 1 else self.log.debug
                log(
                    "Serf RPC reconnect to %s failed (attempt %d): %s",
                    self.rpc_addr,
                    attempts,
                    error,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            self.log.info("reconnected to the Serf agent at %s", self.rpc_addr)
            return

    def _run(self) -> None:
        next_resync = time.monotonic() + self.resync
        while not self._stopping.is_set():
            if self.resync > 0 and time.monotonic() >= next_resync:
                try:
                    self._resync()
                except Exception:
                    self.log.exception("Serf members resync failed")
                next_resync = time.monotonic() + self.resync
            try:
                wait = max(0.0, next_resync - time.monotonic()) if self.resync > 0 else None
                generation, item = self._events.get(timeout=wait)
            except queue.Empty:
                continue
            if self._stopping.is_set():
                return
            if generation != self._generation:
                continue  # from a connection that is gone
            if item is _LOST:
                self._reconnect()
                continue
            try:
                changes = self._apply_record(item)
            except Exception:
                self.log.exception("could not apply a Serf event: %r", item.get("Event"))
                continue
            self._publish(changes)

    def _resync(self) -> None:
        """Reconcile with a fresh members list: the agent coalesces member events for about
        a second (and drops them for a slow client); its members list is current."""
        rpc = self._rpc
        if rpc is None or not self._connected:
            return
        try:
            members = rpc.members()
        except MembershipError as error:  # a lost connection is handled through the queue
            self.log.debug("Serf members resync failed: %s", error)
            return
        self._publish(self._reconcile(members))

    # -- state --------------------------------------------------------------

    def _apply_record(self, record: dict[str, Any]) -> list[Change]:
        state = _EVENT_STATE.get(str(record.get("Event")))
        if state is None:
            return []
        changes: list[Change] = []
        with self._cond:
            for member in parse_members(record):
                changes += self._apply(member, state)
            self._bump(changes)
        return changes

    def _reconcile(self, members: Iterable[Member]) -> list[Change]:
        """Apply a full members list; live workers missing from it were reaped."""
        changes: list[Change] = []
        with self._cond:
            seen = set()
            for member in members:
                seen.add(member.name)
                changes += self._apply(member, _STATUS_STATE.get(member.status, "failed"))
            for name in [n for n in self._live if n not in seen]:
                gone = self._live.pop(name)
                changes.append(Change("reaped", name, gone.worker, "no longer a cluster member"))
            for name in [n for n in self._rejected if n not in seen]:
                del self._rejected[name]
            self._bump(changes)
        return changes

    def _apply(self, member: Member, state: str) -> list[Change]:
        """Bring one member to ``state``; called with the lock held."""
        name = member.name
        before = self._live.get(name)
        if state != "alive":
            self._rejected.pop(name, None)
            if before is None:
                return []
            del self._live[name]
            return [Change(_GONE_KIND[state], name, before.worker, f"member {state}")]
        try:
            info = decode_worker(name, member.tags)
        except TagError as error:
            return self._reject(member, before, str(error))
        self._rejected.pop(name, None)
        if info is None:
            if before is None:
                return []
            del self._live[name]
            return [Change("left", name, before.worker, "no longer advertises role=worker")]
        now = LiveWorker(info.worker, info.queue, "alive", member.addr)
        if before == now:
            return []
        for note in info.notes:
            self.log.warning("Serf member %r: %s", name, note)
        self._live[name] = now
        return [Change("joined" if before is None else "updated", name, info.worker)]

    def _reject(self, member: Member, before: LiveWorker | None, reason: str) -> list[Change]:
        name = member.name
        fingerprint = frozenset(member.tags.items())
        if before is not None:
            del self._live[name]
        if self._rejected.get(name) == (fingerprint, reason) and before is None:
            return []
        self._rejected[name] = (fingerprint, reason)
        self.log.warning("ignoring Serf member %r: its worker tags are rejected: %s", name, reason)
        return [Change("rejected", name, before.worker if before else None, reason)]

    def _bump(self, changes: list[Change]) -> None:
        """Count the changes just made and wake waiters; called with the lock held."""
        if changes:
            self._version += len(changes)
            self._cond.notify_all()

    def _publish(self, changes: list[Change]) -> None:
        for change in changes:
            self.log.info(
                "inventory: %s %s%s",
                change.kind,
                change.name,
                f" ({change.reason})" if change.reason else "",
            )
            if self.on_change is not None:
                try:
                    self.on_change(change)
                except Exception:
                    self.log.exception("inventory on_change callback failed for %s", change)
