"""RabbitMQ topology and connections, shared by the scheduler, workers and CLI.

Queues are durable classic queues, made ``quorum`` by the scheduler's ``queue_type``
(``MM_QUEUE_TYPE=quorum``, which the other processes read too) to replicate them on a
cluster; on one node classic ones are as durable (a persistent message is confirmed once
on disk) and faster (docs/perf/history.md). A queue that already exists is used as it is,
whatever its type. ``mm.requests`` uses single-active-consumer so a standby scheduler
waits and takes over. The dead-letter queue ``mm.dead`` carries rejected
messages with the reason in the ``x-mm-reason`` header and the source queue in
``x-mm-source``; it is bounded (``DEAD_MAX_LENGTH`` letters, the oldest
dropped first), and the scheduler's letters keep the first few KiB of their
body, with the whole body's size and SHA-256 in ``x-mm-size`` and
``x-mm-sha256`` and a stable ``message_id`` a consumer can deduplicate by.
``mm.events`` is a topic exchange
(routing key ``task.<state>``); ``mm.control`` a topic exchange for
cancellations (routing key ``cancel.<worker>``), bound by the scheduler to each
worker's control queue ``mm.control.<worker>``. ``mm.notices`` is a topic exchange
for what the scheduler tells a task's owner (``matchmaker/notices.py``), routing key
the owner's broker user; a client reads it through an exclusive queue of its own,
``mm.inbox.<user>.<suffix>`` (``inbox_queue``), bound with its own user as the key.

Publishing rights are per exchange (docs/security.md), and the right to write
the default exchange is the right to write every queue, which only the
scheduler has. Clients publish requests to the direct exchange ``mm.requests``
and workers their results, and the messages they dead-letter, to the direct
exchange ``mm.results``; each routes by the name of the queue it feeds
(``route``): ``mm.requests`` -> queue ``mm.requests``; ``mm.results`` -> queues
``mm.results`` and ``mm.dead``.

A broker URL may list the nodes of a cluster, comma-separated (``split_urls``):
``connect`` tries them in turn, so a process whose node died reconnects to a
surviving one.

Declaring is idempotent. The scheduler (or the setup) declares the core
objects; a process without the right to configure them checks they exist
(``ensure_core``) and says what to run if they do not.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import ssl
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from matchmaker.wire import pika_shim
from matchmaker.wire.frames import queued_ack as queued_ack  # re-exported
from matchmaker.wire.frames import queued_publish as queued_publish  # re-exported
from matchmaker.wire.frames import read_deliveries

log = logging.getLogger(__name__)

REQUESTS = "mm.requests"
RESULTS = "mm.results"
DEAD = "mm.dead"
EVENTS = "mm.events"
CONTROL = "mm.control"
NOTICES = "mm.notices"
INBOX_PREFIX = "mm.inbox."
DEFAULT_URL = "amqp://matchmaker:matchmaker@127.0.0.1:5672/matchmaker"
ROUTES = {REQUESTS: REQUESTS, RESULTS: RESULTS, DEAD: RESULTS}  # queue -> the exchange feeding it
QUEUE_TYPES = ("classic", "quorum")
QUEUE_TYPE_ENV = "MM_QUEUE_TYPE"

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
DEAD_MAX_LENGTH = 100_000
DEAD_ARGUMENTS = {"x-max-length": DEAD_MAX_LENGTH, "x-overflow": "drop-head"}
MAX_BACKOFF = 5.0


class BrokerError(RuntimeError):
    """The broker cannot be reached or refused us; the text says which and where."""


class TLSRefused(BrokerError):
    """The TLS handshake failed in a way no retry can fix (a certificate that does not
    verify, a client certificate the broker requires or refuses): a configuration error."""


def worker_queue(name: str) -> str:
    return f"mm.worker.{name}"


def control_queue(name: str) -> str:
    """A worker's queue of cancels. Not ``mm.worker.<name>.control``: a worker may be named
    ``<name>.control``, and a worker's rights on its queues are by name."""
    return f"mm.control.{name}"


def inbox_queue(user: str, suffix: str) -> str:
    """A client's queue of notices: ``mm.inbox.<user>.<suffix>``, the suffix without dots
    (so no user's queue names can be another's: a user's rights name ``<user>.`` plus one
    dotless word)."""
    return f"{INBOX_PREFIX}{user}.{suffix}"


def pull_queue(task_type: str) -> str:
    return f"mm.pull.{task_type}"


def route(queue: str) -> tuple[str, str]:
    """(exchange, routing key) of a publish that should land on ``queue``: the core queues
    through their exchanges (``ROUTES``), any other queue through the default exchange."""
    exchange = ROUTES.get(queue)
    return (exchange, queue) if exchange is not None else ("", queue)


def queue_type(chosen: str | None = None) -> str:
    """The type of the queues this process declares: ``chosen`` (the scheduler's
    ``Config.queue_type``), else ``MM_QUEUE_TYPE`` as it is now, else classic; BrokerError
    if it is not one of ``QUEUE_TYPES``."""
    kind = chosen if chosen is not None else os.environ.get(QUEUE_TYPE_ENV, "classic")
    if kind not in QUEUE_TYPES:
        raise BrokerError(f"the queue type must be classic or quorum, not {kind!r}")
    return kind


_URL_START = re.compile(r"\s*,\s*(?=amqps?://)")


def split_urls(url: str) -> list[str]:
    """The URLs of a comma-separated list of broker URLs (the nodes of one cluster), in
    order; a single URL is a list of one. A comma inside a URL stays where it is."""
    parts = (part.strip(" \t,") for part in _URL_START.split(url.strip(" \t,")))
    return [part for part in parts if part]


URL_SCHEMES = ("amqp", "amqps")
_PASSWORD = re.compile(r"(//[^:/@]*):[^@/]*@")


def _unusable(url: str, password_given: bool) -> str | None:
    """Why pika cannot use ``url`` (None: it can), in a sentence without its password."""
    shown = _PASSWORD.sub(r"\1:***@", url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
        if parts.scheme not in URL_SCHEMES:
            raise ValueError("it must begin with amqp:// or amqps://")
        if parts.username is not None and parts.password is None:
            if password_given:
                return None  # the password file adds it (identity.resolve_url)
            raise ValueError(
                f"it names the user {urllib.parse.unquote(parts.username)!r} without a "
                "password (add it, or give a broker password file)"
            )
        pika.URLParameters(url)
    except (ValueError, TypeError, AttributeError) as error:
        return f"the broker URL {shown!r} cannot be used: {error}"
    return None


def url_parameters(url: str) -> pika.URLParameters:
    """pika's parameters for one broker URL; BrokerError with a sentence if it is not an
    ``amqp://`` or ``amqps://`` URL pika can use, or names a user without a password
    (pika would fail on either later, with a traceback)."""
    problem = _unusable(url.strip(), False)
    if problem is not None:
        raise BrokerError(problem)
    return pika.URLParameters(url.strip())


def check_urls(url: str, *, password_given: bool = False) -> list[str]:
    """The URLs of ``url`` (``split_urls``), each one pika can use (a user without a
    password only if ``password_given``: a password file will add it); BrokerError if
    there is none or one cannot be used."""
    urls = split_urls(url)
    if not urls:
        raise BrokerError("no broker URL given")
    for one in urls:
        problem = _unusable(one, password_given)
        if problem is not None:
            raise BrokerError(problem)
    return urls


def sender(url: str) -> str:
    """The broker user of ``url`` (of its first URL: a cluster has one set of users): what
    the AMQP ``user_id`` of its messages must say."""
    return url_parameters(split_urls(url)[0]).credentials.username


def persistent(user: str | None) -> pika.BasicProperties:
    """Properties of a persistent message sent by ``user`` (RabbitMQ checks ``user_id``
    against the connection's user and refuses a message that claims another)."""
    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, user_id=user)


def describe(url: str) -> str:
    """The URL (each URL of a list) without its password, for messages."""
    described = []
    for one in split_urls(url):
        try:
            params = url_parameters(one)
        except BrokerError:
            described.append("an unusable URL")
            continue
        vhost = "" if params.virtual_host == "/" else f"/{params.virtual_host}"
        described.append(f"{params.host}:{params.port}{vhost}")
    return ", ".join(described)


def _reason(error: BaseException) -> str:
    """The innermost useful text of a pika connection error (it nests the socket error)."""
    while True:
        inner = getattr(error, "exception", None)
        if inner is None and error.args and isinstance(error.args[0], BaseException):
            inner = error.args[0]
        if not isinstance(inner, BaseException):
            break
        error = inner
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error).strip() or error.__class__.__name__


class _HasTLS(Protocol):
    @property
    def broker_ca(self) -> str: ...
    @property
    def broker_cert(self) -> str: ...
    @property
    def broker_key(self) -> str: ...


@dataclass(frozen=True)
class TLSFiles:
    """What an ``amqps://`` connection trusts and shows: the CA file that must have signed
    the broker's certificate (empty: the system trust store) and, for mutual TLS, a client
    certificate and its key (PEM files)."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    @classmethod
    def of(cls, config: _HasTLS) -> TLSFiles:
        """The files named by a configuration's ``broker_ca``, ``broker_cert``, ``broker_key``."""
        return cls(config.broker_ca, config.broker_cert, config.broker_key)

    @property
    def trusted(self) -> str:
        return self.ca or "the system trust store"


def tls_options(url: str, tls: TLSFiles | None) -> pika.SSLOptions | None:
    """TLS for an ``amqps://`` URL, None for ``amqp://``: the broker's certificate must
    verify against ``tls.ca`` and match the URL's host (pika's own amqps default checks
    neither). BrokerError if a file cannot be used or TLS files come with ``amqp://``."""
    tls = tls or TLSFiles()
    params = url_parameters(url)
    if params.ssl_options is None:
        if tls != TLSFiles():
            raise BrokerError(
                f"broker_ca, broker_cert and broker_key apply to amqps:// URLs only, and the "
                f"broker at {describe(url)} is given as amqp:// (use amqps:// or drop them)"
            )
        return None
    if tls.key and not tls.cert:
        raise BrokerError("broker_key is set without broker_cert (the client certificate)")
    for key, path in (("broker_ca", tls.ca), ("broker_cert", tls.cert), ("broker_key", tls.key)):
        try:
            regular = not path or stat.S_ISREG(os.stat(path).st_mode)
        except OSError as error:
            raise BrokerError(f"cannot read {key} {path}: {_reason(error)}") from None
        if not regular:
            raise BrokerError(f"{key} {path} is not a regular file")
    try:
        context = ssl.create_default_context(cafile=tls.ca or None)
        if tls.cert:
            context.load_cert_chain(tls.cert, tls.key or None)
    except ssl.SSLError as error:
        files = ", ".join(f for f in (tls.ca, tls.cert, tls.key) if f)
        why = str(error.reason or error).lower().replace("_", " ")
        raise BrokerError(f"cannot use the TLS files {files}: {why}") from None
    except OSError as error:
        raise BrokerError(f"cannot read the TLS files: {_reason(error)}") from None
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return pika.SSLOptions(context, params.host)


def _chain(error: BaseException) -> list[BaseException]:
    """The error and those it wraps (pika nests the socket's error in its own)."""
    chain = [error]
    while len(chain) < 10:
        inner = getattr(chain[-1], "exception", None)
        if inner is None and chain[-1].args and isinstance(chain[-1].args[0], BaseException):
            inner = chain[-1].args[0]
        if not isinstance(inner, BaseException):
            break
        chain.append(inner)
    return chain


def _tls_refusal(url: str, tls: TLSFiles | None, error: BaseException) -> str | None:
    """The sentence for a TLS failure no retry can fix, or None for any other error."""
    where = describe(url)
    for item in _chain(error):
        if isinstance(item, ssl.SSLCertVerificationError):
            why = str(item.verify_message or item.reason or item).rstrip(".")
            trusted = (tls or TLSFiles()).trusted
            return (
                f"the broker at {where} presented a certificate that does not verify "
                f"against {trusted}: {why}"
            )
        alert = re.search(r"\[SSL: ([A-Z0-9_]+)\] ([^(\\'\"]+)", str(item))
        if alert is not None and alert.group(1).endswith("CERTIFICATE_REQUIRED"):
            return f"the broker at {where} requires a client certificate (broker_cert, broker_key)"
        if alert is not None:
            hint = " (a plain AMQP port? use amqp://)" if "VERSION_NUMBER" in alert.group(1) else ""
            why = alert.group(2).strip()
            return f"the TLS handshake with the broker at {where} failed: {why}{hint}"
    return None


def _handshake_hint(error: BaseException, plain: bool) -> str:
    """``_reason``, or what a connection closed at the AMQP handshake usually means: on a
    plain connection, a TLS port; after a TLS handshake, a client certificate the broker
    refused (TLS 1.3 checks it after the client's side of the handshake is done)."""
    if not isinstance(error, pika.exceptions.IncompatibleProtocolError):
        return _reason(error)
    if plain:
        return "it closed the connection during the AMQP handshake (a TLS port? use amqps://)"
    return (
        "it closed the connection after the TLS handshake (a client certificate it requires "
        "or does not trust? see broker_cert, broker_key)"
    )


@contextlib.contextmanager
def _quiet_pika() -> Iterator[None]:
    """pika logs a failed connection attempt as ERRORs with tracebacks; ``connect`` says
    why in one sentence instead, so pika is held to CRITICAL while it connects."""
    pika_log = logging.getLogger("pika")
    level = pika_log.level
    pika_log.setLevel(max(level, logging.CRITICAL))
    try:
        yield
    finally:
        pika_log.setLevel(level)


def connect(
    url: str,
    *,
    attempts: int | None = 1,
    within: float | None = None,
    name: str = "matchmaker",
    stopping: Callable[[], bool] | None = None,
    tls: TLSFiles | None = None,
) -> pika.BlockingConnection:
    """A blocking connection; retries with backoff (capped at ``MAX_BACKOFF`` seconds, one
    log line per attempt) ``attempts`` times, or for ever with None, then BrokerError;
    with ``within``, no retry begins more than that many seconds after the first attempt.
    A ``stopping`` that turns true ends the retries at once, with BrokerError. Only an
    unreachable broker is retried: refused credentials, vhost or TLS are a BrokerError at
    once.

    ``url`` may list the nodes of a cluster (``split_urls``): an attempt tries each in
    turn (``_first_reachable``), beginning after the node this process reached last, so
    a reconnection goes to a surviving node first.

    ``amqps://`` URLs use TLS with ``tls`` (``tls_options``); a certificate that does
    not verify is not retried. Its deliveries are parsed by ``frames.DeliveryReader``
    (pika's path costs more than the rest of processing a message)."""
    untested = pika_shim.check()
    if untested is not None:
        raise BrokerError(untested)
    urls = check_urls(url)
    delay = 0.2
    attempt = 0
    deadline = None if within is None else time.monotonic() + within
    while True:
        attempt += 1
        try:
            return _first_reachable(urls, name, tls)
        except _Unreachable as error:
            why = str(error)
            left = math.inf if deadline is None else deadline - time.monotonic()
            if (attempts is not None and attempt >= attempts) or left <= 0:
                tried = f" (tried for {within:g}s)" if within else ""
                raise BrokerError(
                    f"cannot reach the broker at {describe(url)}{tried}: {why}"
                ) from None
            delay = min(delay, left)
            log.warning(
                "broker %s unreachable (%s); retrying in %.1fs (attempt %d)",
                describe(url),
                why,
                delay,
                attempt,
            )
        if pause(delay, stopping):
            raise BrokerError(f"stopped while connecting to the broker at {describe(url)}")
        delay = min(delay * 2, MAX_BACKOFF)


class _Unreachable(Exception):
    """No node of the list answered; the text says why (per node, for several)."""


_last_reached: dict[tuple[str, ...], int] = {}  # a list of nodes -> the one reached last


def _first_reachable(urls: list[str], name: str, tls: TLSFiles | None) -> pika.BlockingConnection:
    """A connection to the first node of ``urls`` that accepts one, trying them in turn
    from the one after the node reached last; _Unreachable if none does. A refusal no
    other node would answer differently (credentials, vhost, TLS) is a BrokerError."""
    key = tuple(urls)
    start = (_last_reached.get(key, -1) + 1) % len(urls)
    failures = []
    for index in [*range(start, len(urls)), *range(start)]:
        one = urls[index]
        params = url_parameters(one)
        params.ssl_options = tls_options(one, tls)
        params.client_properties = {"connection_name": name}
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        try:
            with _quiet_pika():
                connection = pika.BlockingConnection(params)
            read_deliveries(connection)
        except pika.exceptions.ProbableAuthenticationError:
            raise BrokerError(f"the broker at {describe(one)} refused the credentials") from None
        except pika.exceptions.ProbableAccessDeniedError:
            raise BrokerError(f"access denied to the vhost at {describe(one)}") from None
        except (pika.exceptions.AMQPError, OSError) as error:
            refusal = _tls_refusal(one, tls, error) if params.ssl_options else None
            if refusal is not None:
                raise TLSRefused(refusal) from None
            why = _handshake_hint(error, plain=params.ssl_options is None)
            failures.append(f"{describe(one)}: {why}" if len(urls) > 1 else why)
            continue
        if len(urls) > 1 and _last_reached.get(key, index) != index:
            log.info("connected to broker node %s", describe(one))
        _last_reached[key] = index
        return connection
    raise _Unreachable("; ".join(failures))


def pause(seconds: float, stopping: Callable[[], bool] | None = None) -> bool:
    """Sleep ``seconds`` in short steps; True at once if ``stopping`` turns true."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stopping is not None and stopping():
            return True
        time.sleep(min(left, 0.05))
    return stopping is not None and stopping()


def _queue(channel: BlockingChannel, name: str, kind: str | None, **arguments: Any) -> None:
    """Declare a durable queue of ``queue_type(kind)`` unless it exists: the broker refuses a
    declaration whose type or arguments differ from the queue's (and closes the channel),
    so an existing one, made under another setting or by an operator, is used as it is."""
    kind = queue_type(kind)
    probe = channel.connection.channel()  # a passive declare of a missing queue closes it
    try:
        probe.queue_declare(name, passive=True)
        probe.close()
        return
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 404:
            raise
    channel.queue_declare(name, durable=True, arguments={"x-queue-type": kind, **arguments})


def declare_core(channel: BlockingChannel, kind: str | None = None) -> None:
    """The scheduler's queues (of ``queue_type(kind)``) and exchanges, and the bindings of
    ``ROUTES``."""
    _queue(channel, REQUESTS, kind, **{"x-single-active-consumer": True})
    _queue(channel, RESULTS, kind)
    _queue(channel, DEAD, kind, **DEAD_ARGUMENTS)
    for queue, exchange in ROUTES.items():
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.queue_bind(queue, exchange, routing_key=queue)
    channel.exchange_declare(EVENTS, "topic", durable=True)
    channel.exchange_declare(CONTROL, "topic", durable=True)
    channel.exchange_declare(NOTICES, "topic", durable=True)


def ensure_core(connection: pika.BlockingConnection, url: str) -> None:
    """The core objects exist: checked (which needs no rights), declared only if missing
    (which needs the right to configure them), else a BrokerError that says what to run."""
    probe = connection.channel()
    try:
        for name in (REQUESTS, RESULTS, DEAD):
            probe.queue_declare(name, passive=True)
        for exchange in (REQUESTS, RESULTS, EVENTS, CONTROL):
            probe.exchange_declare(exchange, passive=True)
        probe.close()
        return
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 404:
            raise
    try:
        declare_core(connection.channel())
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 403:
            raise
        raise BrokerError(
            f"the broker at {describe(url)} lacks matchmaker's queues and user "
            f"{sender(url)!r} may not create them: run scripts/broker.sh start (or start "
            "the scheduler) first"
        ) from None


def declare_worker(
    channel: BlockingChannel, name: str, *, bind: bool = True, kind: str | None = None
) -> str:
    """A worker's queue and its control queue; with ``bind``, the control queue bound to
    ``mm.control`` for the worker's cancels (the scheduler's right, not a worker's)."""
    queue = worker_queue(name)
    _queue(channel, queue, kind)
    _queue(channel, control_queue(name), kind)
    if bind:
        channel.queue_bind(control_queue(name), CONTROL, routing_key=f"cancel.{name}")
    return queue


def bind_control(connection: pika.BlockingConnection, name: str) -> bool:
    """Bind the worker's control queue if this user may (on a channel of its own, which a
    refusal closes); False if it may not: the scheduler or the setup binds it."""
    channel = connection.channel()
    try:
        channel.queue_bind(control_queue(name), CONTROL, routing_key=f"cancel.{name}")
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != 403:
            raise
        return False
    channel.close()
    return True


def declare_pull(channel: BlockingChannel, task_type: str, kind: str | None = None) -> str:
    queue = pull_queue(task_type)
    _queue(channel, queue, kind)
    return queue


def send_requests(
    url: str,
    bodies: Iterable[bytes],
    *,
    name: str = "matchmaker-client",
    tls: TLSFiles | None = None,
) -> None:
    """Publish encoded requests to mm.requests in transactions of 1000: once this returns,
    the broker has stored them all."""
    connection = connect(url, name=name, tls=tls)
    try:
        ensure_core(connection, url)
        channel = connection.channel()
        channel.tx_select()
        publish = queued_publish(channel)
        exchange, key = route(REQUESTS)
        properties = persistent(sender(url))
        for count, body in enumerate(bodies, 1):
            publish(exchange, key, body, properties)
            if count % 1000 == 0:
                channel.tx_commit()
        channel.tx_commit()
    finally:
        connection.close()


def dead_letter_properties(
    reason: str,
    source: str,
    *,
    user: str | None = None,
    message_id: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
) -> pika.BasicProperties:
    """A dead letter's properties: persistent, the reason and the source queue in headers,
    and, when given, the sender's broker user as ``user_id`` (a worker's: who says so),
    the letter's stable id and its whole body's size and SHA-256."""
    headers: dict[str, Any] = {"x-mm-reason": reason[:1000], "x-mm-source": source}
    if size is not None:
        headers["x-mm-size"] = size
    if sha256 is not None:
        headers["x-mm-sha256"] = sha256
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        headers=headers,
        message_id=message_id,
        user_id=user,
    )


def dead_letter(channel: BlockingChannel, body: bytes, reason: str, source: str) -> None:
    """Park a rejected message on ``mm.dead`` with the reason in a header."""
    channel.basic_publish("", DEAD, body, dead_letter_properties(reason, source))
