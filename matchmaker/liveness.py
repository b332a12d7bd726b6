"""Failure detection from the broker: which workers have a consumer on their queue.

Model: a worker is reachable for dispatches only while its broker connection
consumes its queue ``mm.worker.<name>``. RabbitMQ's event exchange plugin
(``rabbitmq_event_exchange``) publishes ``consumer.created`` and
``consumer.deleted`` to the topic exchange ``amq.rabbitmq.event`` in one vhost
(the plugin's ``vhost`` setting, ``/`` by default), with the queue's name and
vhost in the headers; a connection that drops (a worker killed with kill -9)
deletes its consumers at once, so the scheduler hears of it within
milliseconds instead of after Serf's failure detection (seconds).

``Liveness`` follows that exchange on a connection and thread of its own
(a server-named exclusive queue bound to ``consumer.*``) and keeps, per
worker the scheduler asked about, the consumer tags it knows. Serf stays the
source for joins, tags and partitions; this only narrows the inventory:

- ``present(workers)`` keeps the workers whose queue has a consumer. A name
  seen for the first time is looked up (a passive declare's consumer count)
  and left out until that says it has one.
- a worker whose last consumer dies with its channel (the broker deletes it
  as ``rmq-internal``: the connection dropped, the process was killed)
  emits ``Change("disconnected")``: its tasks go back to pending, as for a
  Serf failure. One whose last consumer is cancelled by its own user (a
  drain: running tasks still finish and report) emits
  ``Change("unsubscribed")``: no new dispatches, nothing taken back. One
  whose consumer appears again emits ``Change("connected")``.

The first look-up of a name can race with an event about it (both may count
the same consumer); every ``resync`` seconds the watched queues are looked up
again and one that has no consumer is unsubscribed whatever the events said,
so such a count is wrong for at most that long (and Serf still finds a
failure that hid behind it).

Without the plugin, or without the right to read ``amq.rabbitmq.event``
(docs/security.md), it logs one warning and stands aside: every worker Serf
reports is present, and failures are Serf's alone. A lost connection is
retried with a capped backoff; meanwhile the last known state holds.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from matchmaker.wire import amqp, broker
from membership.inventory import Change

log = logging.getLogger("matchmaker.liveness")

EXCHANGE = "amq.rabbitmq.event"
KEYS = ("consumer.created", "consumer.deleted")
PREFIX = "mm.worker."
BASELINE = ""  # the consumer a look-up counted, whose tag no event has named
POLL = 0.05  # the thread's longest wait for broker events
BACKOFF = (0.5, 5.0)
REFUSED = (403, 404, 530)  # access refused, no such exchange, vhost not allowed
DENIED = ("access denied", "refused the credentials")  # broker.connect's refusals
INTERNAL = "rmq-internal"  # who deletes the consumers of a channel that died

T = TypeVar("T")


def events_url(url: str, vhost: str) -> str:
    """``url`` pointed at ``vhost`` (where the plugin publishes its events)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def vhost_of(url: str) -> str:
    """The vhost a broker URL names (``/`` when it names none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class Liveness:
    """Which watched workers consume their queue, from the broker's consumer events."""

    def __init__(
        self,
        url: str,
        events_vhost: str,
        on_change: Callable[[Change], None],
        *,
        tls: broker.TLSFiles | None = None,
        resync: float = 2.0,
    ) -> None:
        self.home_url = url  # the scheduler's vhost, where the worker queues are looked up
        self.url = events_url(url, events_vhost)
        self.events_vhost = events_vhost
        self.vhost = vhost_of(url)  # the scheduler's: events of other vhosts are not ours
        self.on_change = on_change
        self.tls = tls
        self.resync = resync
        self._lock = threading.Lock()
        self._tags: dict[str, set[str]] = {}  # looked-up workers: their consumers' tags
        self._asked: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._watched: set[str] = set()
        self._active = False
        self._off = False  # the plugin or the right is missing: stand aside for good
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: amqp.Connection | None = None
        self._home: amqp.Connection | None = None
        self._lookup: amqp.Channel | None = None
        self._next_resync = 0.0

    # -- the scheduler's side ---------------------------------------------------

    @property
    def active(self) -> bool:
        """True while the broker's consumer events are followed."""
        return self._active

    def start(self) -> Liveness:
        """Connect once here (so the first round already knows), then follow in the
        background; a broker that cannot be reached now is tried again there."""
        try:
            self._connect()
        except amqp.AMQPError as error:
            if not self._off:
                log.info("broker consumer events not followed yet (%s); retrying", error)
        if not self._off:
            self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    def present(self, workers: Mapping[str, T]) -> dict[str, T]:
        """The ``workers`` (by name) that consume their queue; all of them while the
        events are not followed (yet). Names not looked up yet are asked about and left
        out."""
        if self._off:
            return dict(workers)
        active, out = self._active, {}
        with self._lock:
            for name in self._watched - workers.keys():  # out of the inventory: forgotten
                self._watched.discard(name)
                self._tags.pop(name, None)
            for name, worker in workers.items():
                tags = self._tags.get(name)
                if tags is None:
                    if name not in self._watched:
                        self._watched.add(name)
                        self._asked.put(name)
                elif tags:
                    out[name] = worker
        return out if active else dict(workers)  # not (yet) followed: Serf alone decides

    # -- the thread -------------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF[0]
        while not self._stopping.is_set():
            try:
                if not (
                    self._connection
                    and self._connection.is_open
                    and self._home
                    and self._home.is_open
                ):
                    self._connect()
                    delay = BACKOFF[0]
                self._step()
            except (amqp.AMQPError, OSError) as error:
                if self._off:
                    return
                self._close()
                log.warning("lost the broker consumer events (%s); retrying in %.1fs", error, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF[1])

    def _connect(self) -> None:
        """Bind a private queue to the consumer events, then look every watched worker up
        again (events before the bind are not seen; the look-ups cover them)."""
        try:
            connection = broker.connect(self.url, name="matchmaker-liveness", tls=self.tls)
        except broker.BrokerError as error:
            if any(words in str(error) for words in DENIED):  # not an unreachable broker
                self._stand_aside(str(error))
            raise amqp.AMQPConnectionError(str(error)) from None
        try:
            channel = connection.channel()
            private = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            for key in KEYS:
                channel.queue_bind(private, EXCHANGE, key)
            channel.basic_consume(private, self._on_event, auto_ack=True)
        except amqp.ChannelClosedByBroker as error:
            connection.close()
            if error.reply_code in REFUSED:
                self._stand_aside(f"{error.reply_code} {error.reply_text}")
            raise
        self._connection = connection
        if vhost_of(self.url) == self.vhost:
            self._home = connection
        else:
            try:
                self._home = broker.connect(self.home_url, name="matchmaker-liveness", tls=self.tls)
            except broker.BrokerError as error:
                self._close()
                raise amqp.AMQPConnectionError(str(error)) from None
        self._lookup = self._home.channel()
        with self._lock:
            for name in self._watched:
                self._asked.put(name)
            for name, tags in self._tags.items():  # tags seen before are stale now: what
                if tags:  # consumes is counted again, under no name, by the look-up
                    self._tags[name] = {BASELINE}
        self._active = True
        log.info("following the broker's consumer events in vhost %s", self.events_vhost)

    def _stand_aside(self, why: str) -> None:
        self._off = True
        self._active = False
        log.warning(
            "broker-side failure detection is off (%s): enable rabbitmq_event_exchange and "
            "let the scheduler read %s in vhost %s (docs/security.md); failed workers are "
            "found by Serf alone",
            why,
            EXCHANGE,
            self.events_vhost,
        )

    def _close(self) -> None:
        connections = (self._connection, self._home)
        self._connection, self._home, self._lookup = None, None, None
        for connection in connections:
            if connection is not None and connection.is_open:
                with contextlib.suppress(amqp.AMQPError):
                    connection.close()

    def _step(self) -> None:
        assert self._connection is not None and self._home is not None
        self._connection.process_data_events(time_limit=POLL)
        if self._home is not self._connection:
            self._home.process_data_events(time_limit=0)  # its heartbeats
        while True:
            try:
                name = self._asked.get_nowait()
            except queue.Empty:
                break
            self._look_up(name, first=True)
        if self.resync > 0 and time.monotonic() >= self._next_resync:
            self._next_resync = time.monotonic() + self.resync
            with self._lock:
                names = [n for n in self._watched if n in self._tags]
            for name in names:
                self._look_up(name, first=False)

    def _consumers(self, name: str) -> int:
        """The consumer count of ``name``'s queue (0 if there is no such queue)."""
        if self._lookup is None or not self._lookup.is_open:
            assert self._home is not None
            self._lookup = self._home.channel()
        try:
            ok = self._lookup.queue_declare(broker.worker_queue(name), passive=True)
        except amqp.ChannelClosedByBroker as error:
            if error.reply_code != 404:
                raise
            self._lookup = None
            return 0
        return int(ok.method.consumer_count)

    def _look_up(self, name: str, *, first: bool) -> None:
        """A first look-up (of a name, or of every name after a reconnect) counts the
        consumers no event has named; any look-up that finds none unsubscribes it (why it
        has none, no look-up can tell)."""
        count = self._consumers(name)
        with self._lock:
            tags = self._tags.setdefault(name, set())
            before = bool(tags)
            if count == 0:
                tags.clear()
            elif first and not tags:
                tags.add(BASELINE)
            after = bool(tags)
        if before != after:
            self._announce(name, after)

    def _on_event(self, _ch: Any, method: Any, properties: amqp.Properties, _body: bytes) -> None:
        headers = properties.headers or {}
        if _text(headers.get("vhost")) != self.vhost:
            return
        queue_name = _text(headers.get("queue"))
        if not queue_name.startswith(PREFIX):
            return
        name, tag = queue_name[len(PREFIX) :], _text(headers.get("consumer_tag"))
        with self._lock:
            tags = self._tags.get(name)
            if tags is None:
                if name not in self._watched:
                    return  # not asked about: its first look-up will count it
                tags = self._tags[name] = set()
            before = bool(tags)
            if method.routing_key == "consumer.created":
                tags.add(tag)
            elif tag in tags:
                tags.discard(tag)
            else:
                tags.discard(BASELINE)
            after = bool(tags)
        if before == after:
            return
        died = _text(headers.get("user_who_performed_action")) == INTERNAL
        self._announce(name, after, died)

    def _announce(self, name: str, connected: bool, died: bool = False) -> None:
        if connected:
            change = Change("connected", name, None, "consumes its queue")
        elif died:
            change = Change("disconnected", name, None, "its consumer died with its channel")
        else:
            change = Change("unsubscribed", name, None, "no consumer on its queue")
        log.info("worker %s %s (%s)", name, change.kind, change.reason)
        try:
            self.on_change(change)
        except Exception:
            log.exception("liveness on_change callback failed for %s", change)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def start(
    config_url: str,
    events_vhost: str,
    on_change: Callable[[Change], None],
    tls: broker.TLSFiles | None = None,
) -> Liveness | None:
    """A started ``Liveness``, or None when ``events_vhost`` is empty (switched off)."""
    if not events_vhost:
        log.info("broker-side failure detection is switched off; Serf alone finds failures")
        return None
    return Liveness(config_url, events_vhost, on_change, tls=tls).start()
