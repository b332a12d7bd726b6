"""``python -m benchmarks.wire``: the scheduler's broker paths against pika's public async API.

Side by side on one broker, alternating, each the median of ``--runs`` runs:

- **publish + confirm**: ``count`` persistent messages of ``--size`` bytes to a durable
  queue, in batches of ``--batch`` (a round's dispatches), every confirm awaited.
  ``frames``: the scheduler's path (``BlockingConnection``, ``frames.FramePublisher``,
  confirms read by ``frames.DeliveryReader``, ``confirms.Confirms``). ``select``: pika's
  ``SelectConnection`` with ``confirm_delivery(callback)`` (``wire.select_path``), no
  private name. ``raw``: ``BlockingChannel.basic_publish`` without confirms, timed to a
  round trip after the last (the push benchmark's reference).
- **consume + ack**: the messages just published, read with a prefetch window and acked
  every ``--ack-every`` with one ``multiple`` ack. ``frames``: ``frames.consume`` into a
  sink; ``select``: ``basic_consume`` callbacks.

A benchmark, not a test: it prints rates and writes ``results/wire.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matchmaker.wire import amqp, broker, select_path
from matchmaker.wire.confirms import Confirms
from matchmaker.wire.frames import consume

QUEUE = "mm.bench.wire"


def frames_publish(url: str, body: bytes, count: int, batch: int) -> float:
    connection = broker.connect(url, name="wire-bench")
    try:
        confirms: Confirms[int] = Confirms(connection.channel(), wake=True)
        started = time.perf_counter()
        sent = done = 0
        while done < count:
            for _ in range(min(batch, count - sent)):
                confirms.publish("", QUEUE, body, broker.PERSISTENT, sent)
                sent += 1
            connection.process_data_events(time_limit=0 if sent < count else 0.05)
            acked, nacked = confirms.confirmed()
            done += len(acked) + len(nacked)
        return time.perf_counter() - started
    finally:
        connection.close()


def frames_consume(url: str, count: int, prefetch: int, ack_every: int) -> float:
    connection = broker.connect(url, name="wire-bench")
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        ack = broker.queued_ack(channel)
        got: list[int] = []
        started = time.perf_counter()
        consume(channel, QUEUE, lambda tag, _body, _user: got.append(tag))
        acked = 0
        while len(got) < count:
            connection.process_data_events(time_limit=0.05)
            if len(got) - acked >= ack_every or len(got) >= count:
                ack(got[-1], True)
                acked = len(got)
        elapsed = time.perf_counter() - started
        connection.process_data_events(time_limit=0)  # the last ack goes out
        return elapsed
    finally:
        connection.close()


def raw_publish(url: str, body: bytes, count: int) -> float:
    connection = amqp.plain(url)
    try:
        channel = connection.channel()
        properties = broker.PERSISTENT
        started = time.perf_counter()
        for _ in range(count):
            channel.basic_publish("", QUEUE, body, properties)
        channel.queue_declare(QUEUE, durable=True, passive=True)  # a round trip after the last
        return time.perf_counter() - started
    finally:
        connection.close()


def _reset(url: str) -> None:
    connection = broker.connect(url, name="wire-bench")
    try:
        channel = connection.channel()
        channel.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "classic"})
        channel.queue_purge(QUEUE)
    finally:
        connection.close()


def _drop(url: str) -> None:
    connection = broker.connect(url, name="wire-bench")
    try:
        connection.channel().queue_delete(QUEUE)
    finally:
        connection.close()


def run(
    url: str, count: int, size: int, batch: int, runs: int, prefetch: int, ack_every: int
) -> dict[str, Any]:
    body = b"x" * size
    samples: dict[str, list[float]] = {}

    def timed(name: str, measure: Callable[[], float]) -> None:
        samples.setdefault(name, []).append(count / measure())

    paths = ["frames", "select"]
    for round_ in range(runs):
        for path in paths if round_ % 2 == 0 else paths[::-1]:
            _reset(url)
            if path == "frames":
                timed("publish+confirm frames", lambda: frames_publish(url, body, count, batch))
                timed("consume+ack frames", lambda: frames_consume(url, count, prefetch, ack_every))
            else:
                timed(
                    "publish+confirm select",
                    lambda: select_path.publish_confirmed(url, QUEUE, body, count, batch),
                )
                timed(
                    "consume+ack select",
                    lambda: select_path.consume(url, QUEUE, count, prefetch, ack_every),
                )
        _reset(url)
        timed("publish raw (no confirms)", lambda: raw_publish(url, body, count))
    _drop(url)
    return {
        "count": count,
        "size": size,
        "batch": batch,
        "runs": runs,
        "rates": {
            name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for name, v in samples.items()
        },
    }


def table(report: dict[str, Any]) -> str:
    rates = report["rates"]
    raw = rates["publish raw (no confirms)"]["median"]
    lines = [f"{'path':<28} {'median /s':>11} {'range /s':>19} {'x raw':>6}"]
    for name, r in rates.items():
        ratio = f"{r['median'] / raw:.2f}" if name.startswith("publish") else ""
        lines.append(
            f"{name:<28} {r['median']:>11,.0f} {r['min']:>9,.0f}-{r['max']:<9,.0f} {ratio:>6}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.wire", description=__doc__.splitlines()[0]
    )
    p.add_argument("--broker-url", default=broker.DEFAULT_URL)
    p.add_argument("--count", type=int, default=20_000)
    p.add_argument("--size", type=int, default=400, help="message bytes (a dispatch's order)")
    p.add_argument("--batch", type=int, default=1_000, help="publishes per loop turn")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--prefetch", type=int, default=1_000)
    p.add_argument("--ack-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("results/wire.json"))
    args = p.parse_args(argv)
    try:
        report = run(
            args.broker_url,
            args.count,
            args.size,
            args.batch,
            args.runs,
            args.prefetch,
            args.ack_every,
        )
    except (broker.BrokerError, amqp.AMQPError) as error:
        print(f"error: {error or error.__class__.__name__}", file=sys.stderr)
        return 1
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
