"""The worker commands: ``workers`` (and ``workers gc``), ``drain``."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import urllib.parse
from typing import Any

from matchmaker.cli.common import (
    UserError,
    add_json,
    common_options,
    config_of,
    emit,
    ledger_of,
    seconds,
    send,
)
from matchmaker.config import Config
from matchmaker.ledger import LedgerError
from matchmaker.messages import Drain
from matchmaker.wire import amqp, broker

WAIT_POLL = 0.25


def cmd_workers(args: argparse.Namespace) -> int:
    from membership.table import fetch_workers, format_workers

    config = config_of(args).with_serf_auth()
    running: dict[str, int] = {}
    drained: set[str] = set()
    try:
        ledger = ledger_of(config)
        running, drained = ledger.in_flight_by_worker(), ledger.drained()
    except LedgerError:
        pass
    rows = fetch_workers(config.serf_rpc, config.serf_auth_key or None)
    for row in rows:
        if getattr(row, "name", None) in drained and hasattr(row, "status"):
            row.status = f"{row.status} (drained)"
    print(format_workers(rows, args.json, running=running))
    return 0


# -- gc -------------------------------------------------------------------------------


def _vhost(config: Config) -> str:
    first = broker.split_urls(config.broker_url)[0]
    return urllib.parse.unquote(broker.url_parameters(first).virtual_host)


def worker_queues(vhost: str) -> dict[str, int]:
    """Worker name -> consumers on its ``mm.worker.<name>`` / ``mm.control.<name>`` queues,
    as the broker lists them (``rabbitmqctl``: this runs on the broker's host)."""
    from matchmaker.identity import IdentityError
    from matchmaker.users import rabbitmqctl

    try:
        raw = rabbitmqctl("list_queues", "-p", vhost, "name", "consumers", "--formatter", "json")
    except IdentityError as error:
        raise UserError(f"workers gc lists the queues on the broker's host: {error}") from None
    out: dict[str, int] = {}
    for queue in json.loads(raw or "[]"):
        name = str(queue.get("name", ""))
        for prefix in ("mm.worker.", "mm.control."):
            if name.startswith(prefix):
                worker = name[len(prefix) :]
                out[worker] = out.get(worker, 0) + int(queue.get("consumers") or 0)
    return out


def _delete_unused(channel_of: Any, queue: str) -> str:
    """Delete ``queue`` if nobody consumes it: 'deleted', 'in use' or 'gone'."""
    channel = channel_of()
    try:
        channel.queue_delete(queue, if_unused=True)
    except amqp.ChannelClosedByBroker as error:
        return {406: "in use", 404: "gone"}.get(error.reply_code, f"refused ({error.reply_text})")
    with contextlib.suppress(Exception):
        channel.close()
    return "deleted"


def cmd_gc(args: argparse.Namespace) -> int:
    """Delete the queues of workers that are not in the live inventory and have no task in
    flight; a queue someone still consumes is kept (``if-unused``)."""
    from membership.table import fetch_workers

    config = config_of(args).with_serf_auth()
    live = {
        r.name
        for r in fetch_workers(config.serf_rpc, config.serf_auth_key or None)
        if r.status == "alive"
    }
    in_flight: dict[str, int] = {}
    with contextlib.suppress(LedgerError):
        in_flight = ledger_of(config).in_flight_by_worker()
    found = worker_queues(_vhost(config))
    departed = sorted(w for w, consumers in found.items() if w not in live and not consumers)
    kept = {w: "alive" for w in found if w in live}
    kept |= {w: "consumed" for w, consumers in found.items() if w not in live and consumers}
    for worker in [w for w in departed if in_flight.get(w)]:
        kept[worker] = f"{in_flight[worker]} tasks in flight (the scheduler has not let it go yet)"
    departed = [w for w in departed if not in_flight.get(w)]
    deleted: dict[str, dict[str, str]] = {}
    if departed and not args.dry_run:
        connection = broker.connect(
            config.broker_url, name="matchmaker-gc", tls=broker.TLSFiles.of(config)
        )
        try:
            for worker in departed:
                deleted[worker] = {
                    q: _delete_unused(connection.channel, q)
                    for q in (broker.worker_queue(worker), broker.control_queue(worker))
                }
        finally:
            if connection.is_open:
                connection.close()
    verb = "would delete" if args.dry_run else "deleted"
    text = (
        "\n".join(
            [f"{verb} the queues of {w}" + _outcome(deleted.get(w)) for w in departed]
            + [f"kept {w}: {why}" for w, why in sorted(kept.items())]
        )
        or "no worker queues"
    )
    emit(
        args,
        {"departed": departed, "dry_run": args.dry_run, "deleted": deleted, "kept": kept},
        text,
    )
    return 0


def _outcome(results: dict[str, str] | None) -> str:
    odd = {q: r for q, r in (results or {}).items() if r != "deleted"}
    return "" if not odd else " (" + ", ".join(f"{q}: {r}" for q, r in odd.items()) + ")"


# -- drain ----------------------------------------------------------------------------


def cmd_drain(args: argparse.Namespace) -> int:
    if args.undo and args.deadline is not None:
        raise UserError("--deadline is for a drain, not with --undo")
    if args.undo and args.wait:
        raise UserError("--wait is for a drain, not with --undo")
    config = config_of(args)
    send(config, [Drain(args.worker, on=not args.undo, deadline=args.deadline)])
    verb = "undrain" if args.undo else "drain"
    after = f", its tasks move in {args.deadline:g}s" if args.deadline is not None else ""
    if not args.wait:
        emit(
            args,
            {"worker": args.worker, "state": f"{verb} requested", "deadline": args.deadline},
            f"{args.worker}: {verb} requested{after}",
        )
        return 0
    left = wait_drained(config, args.worker, args.timeout, quiet=args.json)
    emit(
        args,
        {"worker": args.worker, "state": "drained" if not left else "draining", "in_flight": left},
        f"{args.worker}: drained, nothing running"
        if not left
        else f"{args.worker}: still {left} tasks after {args.timeout:g}s",
    )
    return 0 if not left else 1


def wait_drained(config: Config, worker: str, timeout: float | None, *, quiet: bool) -> int:
    """Wait until the scheduler has the worker drained and nothing of it in flight (the
    ledger says so); how many tasks are still there when ``timeout`` ends the wait."""
    until = None if timeout is None else time.monotonic() + timeout
    shown = None
    while True:
        try:
            ledger = ledger_of(config)
            drained = worker in ledger.drained()
            left = ledger.in_flight_by_worker().get(worker, 0)
            ledger.close()
        except LedgerError as error:
            raise UserError(f"--wait reads the scheduler's ledger: {error}") from None
        if drained and not left:
            return 0
        if not quiet and (drained, left) != shown:
            where = "drained" if drained else "drain not applied yet"
            print(f"{worker}: {where}, {left} tasks in flight", flush=True)
            shown = (drained, left)
        if until is not None and time.monotonic() >= until:
            return max(left, 1) if not drained else left
        time.sleep(WAIT_POLL)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    workers = sub.add_parser("workers", parents=[common], help="the live worker inventory; gc")
    add_json(workers)
    workers.set_defaults(func=cmd_workers)
    actions = workers.add_subparsers(dest="action")
    gc = actions.add_parser(
        "gc", parents=[common_options(nested=True)], help="delete the queues of departed workers"
    )
    gc.add_argument("--dry-run", dest="dry_run", action="store_true", help="say what would go")
    gc.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="the answer as JSON"
    )
    gc.set_defaults(func=cmd_gc, dry_run=False)

    drain = sub.add_parser("drain", parents=[common], help="stop giving a worker work")
    drain.add_argument("worker")
    drain.add_argument("--undo", action="store_true", help="put the worker back in service")
    drain.add_argument(
        "--deadline", type=seconds, help="then its tasks are cancelled there and run elsewhere"
    )
    drain.add_argument("--wait", action="store_true", help="wait until nothing runs on it")
    drain.add_argument(
        "--timeout", type=seconds, help="with --wait: give up after this long (exit 1)"
    )
    add_json(drain)
    drain.set_defaults(func=cmd_drain)
