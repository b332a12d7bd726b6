"""``Client``: submit tasks to a matchmaker scheduler over RabbitMQ and follow them.

The model. A client holds one broker connection, owned by an I/O thread of its own;
the caller's threads never touch it. On it:

- a publishing channel under publisher confirms: every request (``submit``,
  ``cancel``, ``retry``, ``status``) goes to the ``mm.requests`` exchange, persistent,
  with the client's broker user as ``user_id`` (so the scheduler records it as the
  owner). A call returns once the broker has confirmed its message (stored);
  ``confirm_timeout`` bounds the wait. The caller's requests keep their order on the
  wire, so the scheduler receives them in that order.
- an exclusive inbox queue, ``mm.inbox.<user>.<random>``, bound to the ``mm.notices``
  exchange with the client's own user as the key (the only key its rights allow):
  what the scheduler tells this user about its tasks (``matchmaker/notices.py``):
  final states with the output or the error, refusals, and answers to status requests.

Results never come from reading the ledger. A handle asks the scheduler once for its
task's state when someone first waits on it (the task may have ended before), then
follows the notices. Notices are not persistent: one can be missed while the client is
disconnected, or lost if the scheduler dies between recording a result and publishing
its notice. So after each reconnect, and for any open task not heard of for
``resync_interval`` seconds, the client asks again (status requests of up to 1000 ids).

A lost connection is reconnected for ever, with a capped backoff, trying the broker URLs
in turn; requests the broker had not confirmed are published again (a submit is
idempotent by its id; a second cancel or status changes nothing). The first connection
is not retried: the constructor raises ``ClientError`` with the broker's refusal or why
it cannot be reached.

Threads: the caller's (any number), the I/O thread, and a callback thread that runs
``add_done_callback`` functions in order, so a callback may call the client (submit
the next task of a chain) without holding up the I/O.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from matchmaker import identity
from matchmaker.client.errors import ClientClosed, ClientError
from matchmaker.client.handle import Callback, TaskHandle
from matchmaker.messages import (
    MAX_MESSAGE_BYTES,
    MAX_STATUS_IDS,
    NAME,
    Cancel,
    MessageError,
    Retry,
    Status,
    TaskRequest,
    check_dispatchable,
    decode,
    decode_notices,
    encode,
    show,
)
from matchmaker.wire import amqp, broker
from matchmaker.wire.confirms import Confirms

log = logging.getLogger("matchmaker.client")

TURN = 0.25  # the I/O thread's longest wait for the broker before it looks at its clocks
ASK_RATE, ASK_BURST = 1500.0, 15_000.0  # ids a second in status requests: under the
# scheduler's budget per user (notices.STATUS_RATE, STATUS_BURST), so a resync of many
# tasks is spread out instead of refused
MAX_BACKOFF = 5.0
SUBMIT_FIELDS = frozenset(
    {"type", "payload", "id", "priority", "constraints", "preferences", "timeout", "max_attempts"}
)


@dataclass(eq=False)
class _Call:
    """A caller waiting until the broker has confirmed ``left`` more of its requests (one
    future per call, not per message: a future costs more than the publish)."""

    future: concurrent.futures.Future[None]
    left: int
    started: bool = False  # the future is running: it can no longer be cancelled


@dataclass(eq=False)
class _Out:
    """A request to publish; ``call`` is the caller waiting on it (None: nobody waits)."""

    body: bytes
    call: _Call | None = None


def _url(url: str, user: str | None, password: str | None) -> str:
    """``url`` with ``user`` (if given) and ``password`` (if given) in it."""
    parts = urlsplit(url)
    if user is not None:
        if password is None and unquote(parts.username or "") == user:
            password = unquote(parts.password) if parts.password is not None else None
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{quote(user, safe='')}@{host}{port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if password is not None:
        url = identity.with_password(url, password)
    return url


def _refusal(error: amqp.ChannelClosedByBroker, user: str) -> str:
    if error.reply_code == 404:
        return (
            f"the broker has no {broker.NOTICES} exchange: start the scheduler (or run "
            "`python -m matchmaker users setup`) first"
        )
    if error.reply_code == 403:
        return (
            f"user {user!r} may not read its notices ({error.reply_text}): give it the "
            f"client's rights with `python -m matchmaker users add-client {user}`"
        )
    return f"the broker refused the client's inbox: {error.reply_code} {error.reply_text}"


class Client:
    """Submit tasks and follow them (module docstring). A context manager; ``close()``
    ends it. Thread-safe: any thread may call any method."""

    def __init__(
        self,
        broker_url: str | Sequence[str] = broker.DEFAULT_URL,
        *,
        user: str | None = None,
        password: str | None = None,
        password_file: str | None = None,
        broker_ca: str = "",
        broker_cert: str = "",
        broker_key: str = "",
        name: str = "matchmaker-client",
        confirm_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        resync_interval: float = 30.0,
    ) -> None:
        """``broker_url``: one URL or several (tried in turn, e.g. the nodes of a cluster),
        each naming the client's broker user (or give ``user``). The password: in the
        URL, ``password``, or ``password_file`` (one line, mode 0600). TLS
        (``amqps://``): ``broker_ca`` (empty: the system trust store) and, for mutual
        TLS, ``broker_cert`` and ``broker_key``, as the scheduler and workers take them.
        ValueError for settings that cannot work; ClientError if the broker cannot be
        reached or refuses the client."""
        urls = [broker_url] if isinstance(broker_url, str) else list(broker_url)
        if not urls:
            raise ValueError("Client needs at least one broker URL")
        if password is not None and password_file is not None:
            raise ValueError("give password or password_file, not both")
        secret = identity.read_secret(password_file) if password_file else password
        self._urls = [_url(u, user, secret) for u in urls]
        names = {broker.sender(u) for u in self._urls}
        if len(names) != 1 or not next(iter(names)):
            raise ValueError("every broker URL must name the same user (or give user=)")
        self.user: str = names.pop()
        self._tls = broker.TLSFiles(broker_ca, broker_cert, broker_key)
        try:
            for u in self._urls:
                broker.tls_options(u, self._tls)
        except broker.BrokerError as error:
            raise ValueError(str(error)) from None
        self._name = name
        self.confirm_timeout = confirm_timeout
        self.resync_interval = resync_interval
        self._properties = broker.persistent(self.user)
        self._lock = threading.Lock()
        self._open: dict[str, TaskHandle] = {}  # handles not done yet, by task id
        self._outbox: collections.deque[_Out] = collections.deque()
        self._unconfirmed: list[_Out] = []  # published on a connection that was lost
        self._asks: dict[str, None] = {}  # ids to ask the scheduler about, in order
        self._ask_budget, self._ask_time = ASK_BURST, time.monotonic()
        self._connection: amqp.Connection | None = None
        self._closing = threading.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._connected_once = False
        self._callbacks: queue.SimpleQueue[tuple[TaskHandle, list[Callback]] | None] = (
            queue.SimpleQueue()
        )
        self._io = threading.Thread(target=self._run, name=f"{name}-io", daemon=True)
        self._callback_thread = threading.Thread(
            target=self._run_callbacks, name=f"{name}-callbacks", daemon=True
        )
        self._callback_thread.start()
        self._io.start()
        if not self._ready.wait(connect_timeout) or self._failure is not None:
            why = self._failure or f"no connection within {connect_timeout:g}s"
            self.close()
            where = ", ".join(broker.describe(u) for u in self._urls)
            raise ClientError(f"cannot start the client ({where}): {why}")

    # -- the public side -------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        priority: int = 0,
        constraints: Mapping[str, Any] | None = None,
        preferences: Mapping[str, Any] | None = None,
        timeout: float = 3600.0,
        max_attempts: int = 3,
    ) -> TaskHandle:
        """Submit one task; returns its handle once the broker has stored the request.
        ``id`` is the idempotency key (default: a random one): submitting it again
        changes nothing. A request the scheduler would refuse for its form is refused
        here, with ValueError (``MessageError``) and the reason."""
        return self.submit_many(
            [
                {
                    "type": type, "payload": payload, "id": id, "priority": priority,
                    "constraints": constraints, "preferences": preferences,
                    "timeout": timeout, "max_attempts": max_attempts,
                }
            ]
        )[0]  # fmt: skip

    def submit_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[TaskHandle]:
        """Submit many tasks, each a mapping of ``submit``'s arguments (``type`` required),
        published together and confirmed together; returns their handles in order. Every
        task is checked before any is sent: one bad task refuses the whole call."""
        ids, bodies = [], []
        for n, spec in enumerate(tasks):
            request, body = self._request(n, spec)
            decode(body, expect=("submit",))  # the scheduler's own checks
            if len(body) > MAX_MESSAGE_BYTES // 8:  # only a large one can grow past the limit
                check_dispatchable(request)
            ids.append(request.id)
            bodies.append(body)
        handles = [self._handle(task_id) for task_id in ids]
        self._send(bodies)
        return handles

    def handle(self, task_id: str) -> TaskHandle:
        """A handle on a task submitted before (by this user, from any process)."""
        return self._handle(_task_id(task_id))

    def cancel(self, task_id: str) -> None:
        """Ask the scheduler to cancel the task; returns once the broker has the request."""
        self._send([encode(Cancel(_task_id(task_id)))])

    def retry(self, task_id: str) -> TaskHandle:
        """Run a dead or cancelled task again, as one more attempt; returns a handle that
        follows that attempt, not the end of the one before (the scheduler refuses to
        retry a task in any other state: the handle then ends as the task is)."""
        _task_id(task_id)
        barrier = uuid.uuid4().hex
        with self._lock:
            handle = self._open.get(task_id)
            if handle is None:
                handle = self._open[task_id] = TaskHandle(self, task_id)
            handle.rebase(barrier)
            handle.watched = True
        self._send([encode(Retry(task_id)), encode(Status([task_id], barrier))])
        return handle

    def close(self) -> None:
        """Close the connection; waits end with ClientClosed, queued callbacks still run."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake()
        if threading.current_thread() is not self._io:
            self._io.join(10)
        with self._lock:
            handles = list(self._open.values())
            self._open.clear()
            waiting = [*self._outbox, *self._unconfirmed]
            self._outbox.clear()
            self._unconfirmed = []
        for out in waiting:
            self._settle(out, ClientClosed("the client was closed before the broker confirmed"))
        for handle in handles:
            handle.close()
        self._callbacks.put(None)
        if threading.current_thread() is not self._callback_thread:
            self._callback_thread.join(10)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for the handles -----------------------------------------------------------------

    def watch(self, handle: TaskHandle) -> None:
        """Ask the scheduler once what the task is now (it may have ended before anyone
        waited); the notices that follow keep the handle current."""
        if handle.watched:
            return
        handle.watched = True
        with self._lock:
            self._asks[handle.id] = None
        self._wake()

    def ask(self, ids: list[str], answer_to: TaskHandle) -> str:
        """Send a status request with a fresh ``ref``, which ``answer_to`` awaits."""
        ref = uuid.uuid4().hex
        answer_to.expect(ref)
        with self._lock:
            self._open.setdefault(answer_to.id, answer_to)
        self._send([encode(Status(ids, ref))], wait=False)
        return ref

    def run_callbacks(self, handle: TaskHandle, callbacks: list[Callback], here: bool) -> None:
        if here:
            _call(handle, callbacks)
        else:
            self._callbacks.put((handle, callbacks))

    # -- the caller's side of publishing ------------------------------------------------------

    def _request(self, n: int, spec: Mapping[str, Any]) -> tuple[TaskRequest, bytes]:
        if not isinstance(spec, Mapping):
            raise ValueError(f"task {n} must be a mapping of submit's arguments, not {spec!r:.60}")
        unknown = set(spec) - SUBMIT_FIELDS
        if unknown or "type" not in spec:
            why = f"unknown keys {sorted(unknown)}" if unknown else "no 'type'"
            raise ValueError(f"task {n}: {why} (a task has {', '.join(sorted(SUBMIT_FIELDS))})")
        fields = {k: v for k, v in spec.items() if v is not None}
        fields.setdefault("id", uuid.uuid4().hex)
        try:
            for key in ("payload", "constraints", "preferences"):
                if key in fields:
                    fields[key] = dict(fields[key])
            request = TaskRequest(**fields)
            body = encode(request)
        except (TypeError, ValueError) as error:
            raise ValueError(f"task {n} cannot be sent as JSON: {error}") from None
        return request, body

    def _handle(self, task_id: str) -> TaskHandle:
        with self._lock:
            handle = self._open.get(task_id)
            if handle is None:
                handle = self._open[task_id] = TaskHandle(self, task_id)
            return handle

    def _send(self, bodies: list[bytes], wait: bool = True) -> None:
        if self._closing.is_set():
            raise ClientClosed("the client is closed")
        call = _Call(concurrent.futures.Future(), len(bodies)) if wait else None
        outs = [_Out(body, call) for body in bodies]
        with self._lock:
            self._outbox.extend(outs)
        self._wake()
        if call is None:
            return
        try:
            call.future.result(self.confirm_timeout)  # a refusal is raised
        except TimeoutError:
            call.future.cancel()  # not sent yet: it will not be; sent: its confirms are ignored
            raise ClientError(
                f"the broker did not confirm {call.left} of {len(bodies)} requests in "
                f"{self.confirm_timeout:g}s (is it reachable? the client keeps trying)"
            ) from None

    def _wake(self) -> None:
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.add_callback_threadsafe(_nothing)

    # -- the I/O thread ------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.2
        while not self._closing.is_set():
            confirms: Confirms[_Out] | None = None
            try:
                confirms = self._session()
                delay = 0.2
            except (amqp.AMQPError, broker.BrokerError, OSError, ClientError) as error:
                if not self._connected_once:
                    self._failure = error
                    self._ready.set()
                    return
                if not self._closing.is_set():
                    why = str(error) or error.__class__.__name__
                    log.warning("lost the broker (%s); reconnecting in %.1fs", why, delay)
            finally:
                self._drop(confirms)
            if self._closing.wait(delay):
                break
            delay = min(delay * 2, MAX_BACKOFF)

    def _connect(self) -> amqp.Connection:
        error: broker.BrokerError | None = None
        for url in self._urls:
            try:
                return broker.connect(url, name=self._name, tls=self._tls)
            except broker.BrokerError as refused:
                error = refused
        assert error is not None
        raise error

    def _session(self) -> Confirms[_Out] | None:
        """One connection's life: set up, then publish, read and resync until it ends."""
        connection = self._connection = self._connect()
        inbox = connection.channel()
        queue_name = broker.inbox_queue(self.user, uuid.uuid4().hex)
        try:
            inbox.queue_declare(queue_name, exclusive=True, auto_delete=True)
            inbox.queue_bind(queue_name, broker.NOTICES, routing_key=self.user)
        except amqp.ChannelClosedByBroker as error:
            raise ClientError(_refusal(error, self.user)) from None
        inbox.basic_consume(queue_name, self._on_notice, auto_ack=True)
        confirms: Confirms[_Out] = Confirms(connection.channel(), wake=True)
        with self._lock:
            self._outbox.extendleft(reversed(self._unconfirmed))
            self._unconfirmed = []
            if self._connected_once:  # what this client missed while it was away
                self._asks.update(dict.fromkeys(self._open))
        self._connected_once = True
        self._ready.set()
        resync = time.monotonic() + self.resync_interval
        while not self._closing.is_set():
            self._publish(confirms)
            connection.process_data_events(time_limit=TURN)
            self._collect(confirms)
            if time.monotonic() >= resync:
                resync = time.monotonic() + self.resync_interval
                self._resync()
        return confirms

    def _publish(self, confirms: Confirms[_Out]) -> None:
        exchange, key = broker.route(broker.REQUESTS)
        now = time.monotonic()
        budget = min(ASK_BURST, self._ask_budget + (now - self._ask_time) * ASK_RATE)
        with self._lock:
            outs = list(self._outbox)
            self._outbox.clear()
            ids = list(itertools.islice(self._asks, int(budget)))
            for task_id in ids:
                del self._asks[task_id]
        self._ask_budget, self._ask_time = budget - len(ids), now
        for n in range(0, len(ids), MAX_STATUS_IDS):
            outs.append(_Out(encode(Status(ids[n : n + MAX_STATUS_IDS]))))
        for out in outs:
            call = out.call
            if call is not None and not call.started:
                if not call.future.set_running_or_notify_cancel():
                    continue  # its caller gave up before it was sent
                call.started = True
            confirms.publish(exchange, key, out.body, self._properties, out)

    def _collect(self, confirms: Confirms[_Out]) -> None:
        acked, nacked = confirms.confirmed()
        for out, _ in acked:
            self._settle(out, None)
        for out in nacked:
            self._settle(out, ClientError("the broker refused the request (a negative confirm)"))

    @staticmethod
    def _settle(out: _Out, error: BaseException | None) -> None:
        """One of a call's requests confirmed (``error`` None) or refused (the call fails)."""
        call = out.call
        if call is None or call.future.done():
            return
        if not call.started:
            if not call.future.set_running_or_notify_cancel():
                return
            call.started = True
        if error is not None:
            call.future.set_exception(error)
            return
        call.left -= 1
        if call.left == 0:
            call.future.set_result(None)

    def _resync(self) -> None:
        """Ask again about every open task not heard of for ``resync_interval``."""
        quiet = time.monotonic() - self.resync_interval
        with self._lock:
            for task_id, handle in self._open.items():
                if handle.heard <= quiet:
                    self._asks[task_id] = None

    def _drop(self, confirms: Confirms[_Out] | None) -> None:
        """The connection ended: what it did not confirm is published again on the next."""
        if confirms is not None:
            self._collect(confirms)
            with self._lock:
                self._unconfirmed.extend(confirms.pending.values())
            confirms.pending.clear()
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()

    def _on_notice(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        try:
            batch = decode_notices(body)
        except MessageError as error:
            log.warning("ignored a notice: %s", error)
            return
        for _, reason in batch.invalid:
            log.warning("ignored a notice: %s", reason)
        for notice in batch.items:
            with self._lock:
                handle = self._open.get(notice.id)
            if handle is None:
                continue
            callbacks = handle.apply(notice)
            with self._lock:  # as ``retry`` reopens a handle: under the lock
                if handle.done() and self._open.get(notice.id) is handle:
                    del self._open[notice.id]
            if callbacks:
                self._callbacks.put((handle, callbacks))

    def _run_callbacks(self) -> None:
        while (item := self._callbacks.get()) is not None:
            _call(*item)


def _task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not NAME.fullmatch(task_id):
        raise ValueError(f"not a task id: {show(task_id)}")
    return task_id


def _call(handle: TaskHandle, callbacks: list[Callback]) -> None:
    for fn in callbacks:
        try:
            fn(handle)
        except Exception:
            log.exception("a done callback of task %s failed", handle.id)


def _nothing() -> None:
    """Wakes the I/O thread (``add_callback_threadsafe``)."""
