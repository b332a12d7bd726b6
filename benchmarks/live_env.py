"""What every live scenario needs: a private vhost, clean-up on any exit, ledger reads.

``Env`` owns an ``ExitStack``: each scenario registers what it starts
(vhosts, clusters, bare Serf agents, Celery) and ``Env.close()`` undoes it
in reverse order, whether the run ended normally, with an error or with
Ctrl-C. Vhosts are made with ``rabbitmqctl`` for the matchmaker user and
deleted afterwards, so runs never see each other's queues.

Ledger reads go through a read-only ledger handle (``LedgerView``) while
the scheduler writes: its SQLite file (WAL allows that), or with
``ledger_url`` a PostgreSQL database, where each cluster gets a schema of
its own, dropped on close.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.progress import Progress
from matchmaker.config import Config
from matchmaker.devtools.cluster import LocalCluster, Process
from matchmaker.ledger import LedgerError, TaskLedger, open_url
from matchmaker.messages import TaskRequest, TaskResult, decode_results, encode
from matchmaker.wire import amqp, broker

AMQP = "amqp://matchmaker:matchmaker@127.0.0.1:5672"
ROUND_LOG = ("--log-level", "DEBUG", "--log-format", "json")  # one line per round, timestamped
ROUND_LINE = re.compile(r"round: (\d+) placed, (\d+) waiting, ([0-9.]+) ms")
USER = "matchmaker"
BATCH = 1000


class LiveError(RuntimeError):
    """A live benchmark could not run; the text says what to fix."""


def rabbitmqctl(*args: str, stdin: bytes | None = None) -> str:
    """Run ``rabbitmqctl -q args``; its output. LiveError (BrokerError: the node is down)
    with rabbitmqctl's own first error line when it fails."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args], input=stdin, check=True, capture_output=True, timeout=60
        )
    except FileNotFoundError:
        raise LiveError("rabbitmqctl is not installed (apt-get install rabbitmq-server)") from None
    except subprocess.CalledProcessError as error:
        lines = (error.stderr or b"").decode(errors="replace").strip().splitlines() or [str(error)]
        first = next((line for line in lines if line.startswith("Error")), lines[0])
        first = first.split(". Please")[0]  # rabbitmqctl's pointer to diagnostics below it
        if "unable to perform an operation on node" in first:
            raise broker.BrokerError(
                f"RabbitMQ does not answer rabbitmqctl ({first}); bash scripts/broker.sh start"
            ) from None
        raise LiveError(f"rabbitmqctl {' '.join(args)} failed: {first}") from None
    return done.stdout.decode(errors="replace")


def rabbit_setting(key: str) -> str | None:
    """The running broker's ``rabbit`` application setting ``key`` (None if it cannot say)."""
    try:
        answer = rabbitmqctl("eval", f"application:get_env(rabbit, {key}).")
    except (LiveError, broker.BrokerError, subprocess.TimeoutExpired):
        return None
    found = re.fullmatch(r"\{ok,(.+)\}", answer.strip())
    return found.group(1) if found else None


def vhost_definitions(names: list[str], user: str = USER) -> str:
    """Definitions (``rabbitmqctl import_definitions``, JSON on stdin) of vhosts on which
    ``user`` may do everything: one Erlang boot for them all instead of two per vhost."""
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    return json.dumps(
        {
            "vhosts": [{"name": name} for name in names],
            "permissions": [{"user": user, "vhost": name, **everything} for name in names],
        }
    )


@dataclass
class Env:
    """Shared settings and the stack of things to stop."""

    amqp: str = AMQP
    workdir: Path = Path("results/live-work")
    progress: bool = False
    round_interval: float = Config.round_interval
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    ledger_url: str = ""  # empty: each scheduler's own SQLite file

    def vhost(self, label: str) -> str:
        """A fresh vhost for the user of ``amqp``; returns its AMQP URL. Deleted on close."""
        name = f"mm-live-{label}-{uuid.uuid4().hex[:8]}"
        self.stack.callback(_delete_vhost, name)
        user = broker.sender(self.amqp) or USER
        rabbitmqctl("import_definitions", stdin=vhost_definitions([name], user).encode())
        url = f"{self.amqp}/{name}"
        broker.connect(url, attempts=1, name="live-probe").close()  # BrokerError: says why
        return url

    def cluster(self, label: str, round_log: bool = True) -> LocalCluster:
        """A LocalCluster on its own vhost (rounds every ``round_interval``), stopped on close.
        ``round_log``: its scheduler logs a line per round (``ROUND_LOG``, for ``rounds``);
        without it the scheduler logs as deployed, with nothing written between a round and
        its dispatches leaving."""
        url = self.vhost(label)
        workdir = self.workdir / f"{label}-{uuid.uuid4().hex[:6]}"
        workdir.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(
            broker_url=url,
            workdir=workdir,
            round_interval=self.round_interval,
            scheduler_args=ROUND_LOG if round_log else (),
            ledger_url=self.fresh_ledger(label),
        )
        self.stack.callback(cluster.stop)
        return cluster

    def fresh_ledger(self, label: str) -> str:
        """An empty ledger for one cluster: "" (its own SQLite file) or, on PostgreSQL, a
        new schema in ``ledger_url``'s database (dropped on close)."""
        if not self.ledger_url.startswith(("postgresql://", "postgres://")):
            return self.ledger_url
        url, schema = fresh_schema(self.ledger_url, label)
        self.stack.callback(drop_schema, self.ledger_url, schema)
        return url

    def bar(self, total: float, label: str) -> Progress:
        return Progress(total, label, force=self.progress)

    def close(self) -> None:
        self.stack.close()


def fresh_schema(url: str, label: str) -> tuple[str, str]:
    """A new schema in the PostgreSQL database ``url`` names: (a URL whose sessions use
    it, its name). LiveError if it cannot be made."""
    import psycopg

    schema = f"mm_bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
            db.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise LiveError(
            f"cannot make a schema in the PostgreSQL ledger database: {first}"
        ) from None
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))  # other options (synchronous_commit) stay
    query["options"] = f"{query.get('options', '')} -csearch_path={schema}".strip()
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)  # %20, not +
    return urllib.parse.urlunsplit(parts._replace(query=encoded)), schema


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
            db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    except psycopg.Error as error:
        print(f"warning: schema {schema} not dropped: {error}", file=sys.stderr)


def _delete_vhost(name: str, timeout: float = 60.0) -> None:
    """Delete a vhost; a busy broker may refuse or time out at first, so retry until it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rabbitmqctl("delete_vhost", name)
            return
        except broker.BrokerError:  # no broker to delete it on (the run has said so)
            return
        except LiveError as error:
            if not _vhost_exists(name):
                return
            if time.monotonic() > deadline:
                print(f"warning: vhost {name} not deleted: {error}", file=sys.stderr)
                return
            time.sleep(1.0)


def _vhost_exists(name: str) -> bool:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60
    )
    return name in listing.stdout.split()


# -- publishing -----------------------------------------------------------------------


def sleep_request(task_id: str, seconds: float = 0.0, **fields: Any) -> TaskRequest:
    payload = {"seconds": seconds, **fields.pop("payload", {})}
    return TaskRequest(task_id, "sleep", payload, **fields)


def publish_requests(url: str, bodies: Iterable[bytes], queue: str = broker.REQUESTS) -> float:
    """Publish persistent messages in transactions of ``BATCH``; returns the first send time."""
    connection = broker.connect(url, name="live-benchmark")
    first = 0.0
    try:
        channel = connection.channel()
        broker.declare_core(channel)
        channel.tx_select()
        exchange, key = broker.route(queue)
        properties = broker.persistent(broker.sender(url))
        for count, body in enumerate(bodies, 1):
            if not first:
                first = time.time()
            channel.basic_publish(exchange, key, body, properties)
            if count % BATCH == 0:
                channel.tx_commit()
        channel.tx_commit()
    finally:
        _close(connection)
    return first


def paced(
    url: str,
    rate: float,
    count: int,
    make: Callable[[int, float], bytes],
    queue: str = broker.REQUESTS,
    *,
    offsets: Iterable[float] | None = None,
    bar: Progress | None = None,
) -> list[float]:
    """Publish ``count`` messages at ``rate``/s (or at ``offsets`` seconds from the start).

    ``make(i, now)`` builds message i at its send time; persistent, no
    confirms (one client, as an orchestrator would send); each message is
    written to the socket as soon as it is due. Returns the send times.
    """
    connection = broker.connect(url, name="live-paced")
    times: list[float] = []
    try:
        channel = connection.channel()
        broker.declare_core(channel)
        publish = broker.queued_publish(channel)
        exchange, key = broker.route(queue)
        properties = broker.persistent(broker.sender(url))
        when = list(offsets) if offsets is not None else [i / rate for i in range(count)]
        start = time.time()
        i = 0
        while i < count:
            now = time.time()
            while i < count and start + when[i] <= now:
                body = make(i, now)
                publish(exchange, key, body, properties)
                times.append(now)
                i += 1
                now = time.time()
            connection.process_data_events(time_limit=0)  # sends what is due now
            if bar is not None:
                bar.update(i)
            if i < count:
                pause = start + when[i] - time.time()
                connection.sleep(min(max(pause, 0.0002), 0.05))
        channel.queue_declare(queue, passive=True)  # a round trip: everything was routed
    finally:
        _close(connection)
    return times


def _close(connection: amqp.Connection) -> None:
    """Close unless the broker already did (its error is the one worth reporting)."""
    if connection.is_open:
        connection.close()


def request_body(request: TaskRequest) -> bytes:
    return encode(request)


# -- the ledger -------------------------------------------------------------------------


class LedgerView:
    """Read-only SQL (``?`` placeholders) on a scheduler's ledger, whichever backend."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.ledger: TaskLedger | None = None

    def _ledger(self) -> TaskLedger | None:
        if self.ledger is None:
            try:
                self.ledger = open_url(
                    self.cluster.ledger_url, self.cluster.state_dir, readonly=True
                )
            except LedgerError:  # not there yet
                return None
        return self.ledger

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        ledger = self._ledger()
        if ledger is None:
            return []
        try:
            return ledger.query(sql, args)
        except (LedgerError, sqlite3.OperationalError):  # the schema is not there yet
            return []

    def counts(self) -> dict[str, int]:
        return {s: n for s, n in self.rows("SELECT state, COUNT(*) FROM tasks GROUP BY state")}

    def transitions(self, state: str, attempt: int | None = None) -> list[tuple[Any, ...]]:
        """(id, attempt, worker, at, note) of every transition into ``state``."""
        sql = "SELECT id, attempt, worker, at, note FROM transitions WHERE state = ?"
        if attempt is None:
            return self.rows(sql, state)
        return self.rows(sql + " AND attempt = ?", state, attempt)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None


def wait_for(
    done: Callable[[], int],
    total: int,
    timeout: float,
    what: str,
    bar: Progress | None = None,
    poll: float = 0.1,
    watch: Iterable[Process | None] = (),
) -> float:
    """Poll ``done()`` until it reaches ``total``; returns the time it did.

    LiveError on timeout, or as soon as a ``watch``ed process has exited.
    """
    deadline = time.monotonic() + timeout
    value = 0
    watched = [p for p in watch if p is not None]
    while time.monotonic() < deadline:
        for process in watched:
            if not process.alive():
                if bar is not None:
                    bar.close()
                raise LiveError(
                    f"{process.name} exited while waiting for {what}:\n{process.tail()}"
                )
        value = done()
        if bar is not None:
            bar.update(value)
        if value >= total:
            if bar is not None:
                bar.close()
            return time.time()
        time.sleep(poll)
    if bar is not None:
        bar.close()
    raise LiveError(f"timed out after {timeout:g} s waiting for {what} ({value} of {total})")


def rounds(cluster: LocalCluster, start: float = 0.0, end: float = float("inf")) -> dict[str, Any]:
    """The scheduler's rounds that ended in [start, end], from its debug log line per round.

    Returns their count, tasks placed, and the time spent in rounds (total and
    p50/max per round, ms): what the window spent planning and pushing, the
    rest being intake, results and waiting.
    """
    placed, spent = 0, []
    if cluster.scheduler is not None:
        for line in cluster.scheduler.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            match = ROUND_LINE.match(str(entry.get("msg", "")))
            if match and start <= entry.get("at", 0) <= end:
                placed += int(match.group(1))
                spent.append(float(match.group(3)))
    stats = percentiles(spent)
    return {
        "rounds": len(spent),
        "placed": placed,
        "total_ms": float(sum(spent)),
        "p50_ms": stats["p50"],
        "max_ms": stats["max"],
    }


def describe_rounds(spent: dict[str, Any]) -> str:
    if not spent["rounds"]:
        return "no round timings (the scheduler logged no round lines)"
    return (
        f"{spent['rounds']} rounds placed {spent['placed']:,}, {spent['total_ms'] / 1e3:.2f} s "
        f"in rounds (p50 {spent['p50_ms']:.1f} ms, max {spent['max_ms']:.0f} ms)"
    )


# -- results read off mm.results (pull mode, where no ledger has them) ------------------


class Results:
    """Consumes ``mm.results`` on its own thread; keeps each task's first final result."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.finals: dict[str, TaskResult] = {}
        self.duplicates = 0
        self.failed = 0
        self.error: amqp.AMQPError | None = None  # the connection it lost
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-results", daemon=True)

    def start(self) -> Results:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the results consumer did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def count(self) -> int:
        """Final results so far; raises what the consumer's connection died of."""
        if self.error is not None:
            raise self.error
        return len(self.finals)

    def _run(self) -> None:
        connection = broker.connect(self.url, name="live-results")
        try:
            channel = connection.channel()
            broker.declare_core(channel)
            channel.basic_qos(prefetch_count=500)
            channel.basic_consume(broker.RESULTS, self._on_result)
            self._ready.set()
            while not self._stop.is_set():
                connection.process_data_events(time_limit=0.1)
        except amqp.AMQPError as error:  # the waiting thread reports it
            self.error = error
        finally:
            if connection.is_open:
                connection.close()

    def _on_result(
        self,
        channel: Any,
        method: amqp.Deliver,
        _props: amqp.Properties,
        body: bytes,
    ) -> None:
        for result in decode_results(body).items:
            if result.state == "succeeded":
                if result.id in self.finals:
                    self.duplicates += 1
                else:
                    self.finals[result.id] = result
            elif result.state == "failed":
                self.failed += 1
        channel.basic_ack(method.delivery_tag)


# -- figures ------------------------------------------------------------------------------


def percentiles(values: Iterable[float]) -> dict[str, float | int]:
    """count, p50, p95, p99, max, mean of the values (NaN when empty)."""
    array = np.asarray(list(values), dtype=np.float64)
    if len(array) == 0:
        nan = float("nan")
        return {"count": 0, "p50": nan, "p95": nan, "p99": nan, "max": nan, "mean": nan}
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "count": len(array),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(array.max()),
        "mean": float(array.mean()),
    }


def median(values: Iterable[float]) -> float:
    array = [v for v in values if v == v]
    return float(np.median(array)) if array else float("nan")


def verdict(met: bool, text: str) -> dict[str, Any]:
    return {"met": met, "target": text}


def dump(value: Any) -> str:
    return json.dumps(value, default=str)


@contextlib.contextmanager
def channel(url: str) -> Iterator[amqp.Channel]:
    connection = broker.connect(url, name="live-benchmark")
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()
