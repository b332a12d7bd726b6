"""``events``: the tasks' state changes, the recent ones from the ledger and, with
``--follow``, the live ones as the scheduler publishes them.

Live events come from the broker, as every consumer of them gets them: the scheduler
publishes each batch of state changes to the topic exchange ``mm.events`` with the
routing key ``task.<state>``; ``--follow`` binds a queue of its own (server-named,
exclusive: it goes away with the command) for the states asked for. The recent ones are
the ledger's ``transitions``, read-only. One line per change, or one JSON object per line
with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator, Iterable
from typing import Any

import orjson

from matchmaker.cli.common import UserError, add_json, config_of, ledger_of, when
from matchmaker.cli.tasks import STATES
from matchmaker.config import Config
from matchmaker.ledger import LedgerError
from matchmaker.wire import amqp, broker

EVENT_STATES = (*STATES, "ignored-running", "ignored-succeeded", "ignored-failed")


def recent(config: Config, limit: int, states: set[str]) -> list[dict[str, Any]]:
    """The last ``limit`` transitions in the ledger (oldest first)."""
    if limit <= 0:
        return []
    try:
        ledger = ledger_of(config)
    except LedgerError:
        return []  # no ledger here yet: nothing has happened
    try:
        return ledger.recent_transitions(limit, states)
    except LedgerError as error:
        raise UserError(f"cannot read the ledger's history: {error}") from None
    finally:
        ledger.close()


def live(config: Config, states: set[str]) -> Generator[dict[str, Any], None, None]:
    """The events the scheduler publishes from now on, until interrupted."""
    connection = broker.connect(
        config.broker_url, name="matchmaker-events", tls=broker.TLSFiles.of(config)
    )
    try:
        channel = connection.channel()
        try:
            channel.exchange_declare(broker.EVENTS, passive=True)
        except amqp.ChannelClosedByBroker as error:
            if error.reply_code != 404:
                raise
            raise UserError(
                "the broker has no mm.events exchange yet: start the scheduler"
            ) from None
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for key in sorted(f"task.{s}" for s in states) or ["task.#"]:
            channel.queue_bind(queue, broker.EVENTS, routing_key=key)
        yield {}  # bound: what the scheduler publishes from here on reaches this queue
        for _, _, body in channel.consume(queue, auto_ack=True):
            yield from _events_of(body)
    finally:
        if connection.is_open:
            connection.close()


def _events_of(body: bytes) -> Iterable[dict[str, Any]]:
    try:
        message = orjson.loads(body)
        events = message.get("events") if isinstance(message, dict) else None
    except orjson.JSONDecodeError:
        events = None
    if not isinstance(events, list):
        print("matchmaker: skipped an event message that is not an events batch", file=sys.stderr)
        return []
    return [e for e in events if isinstance(e, dict)]


def line(event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(event)
    note = f"  ({event.get('note')})" if event.get("note") else ""
    at = event.get("at")
    stamp = when(at if isinstance(at, int | float) else None)
    state, worker = str(event.get("state")), event.get("worker") or "-"
    return f"{stamp}  {event.get('id')}  attempt {event.get('attempt')}  {state:<18} {worker}{note}"


def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return int(text)


def cmd_events(args: argparse.Namespace) -> int:
    config = config_of(args)
    states = set(args.state or [])
    wanted = (lambda e: e.get("id") == args.task) if args.task else (lambda e: True)
    stream = live(config, states) if args.follow else None
    if stream is not None:
        next(stream)  # bound before the history is read: nothing falls in between
        print("matchmaker: following live events (Ctrl-C ends)", file=sys.stderr, flush=True)
    for event in recent(config, args.last, states):
        if wanted(event):
            print(line(event, args.json), flush=True)
    if stream is None:
        return 0
    try:
        for event in stream:
            if wanted(event) and (not states or event.get("state") in states):
                print(line(event, args.json), flush=True)
    finally:
        stream.close()
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    events = sub.add_parser(
        "events", parents=[common], help="tasks' state changes (--follow: live)"
    )
    events.add_argument("--follow", "-f", action="store_true", help="keep printing live events")
    events.add_argument(
        "--state", action="append", choices=EVENT_STATES, help="only these (repeatable)"
    )
    events.add_argument("--task", help="only this task's")
    events.add_argument(
        "--last",
        type=count,
        default=20,
        help="recent changes from the ledger first (default 20; 0: none)",
    )
    add_json(events)
    events.set_defaults(func=cmd_events)
