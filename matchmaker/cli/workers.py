"""The worker commands: ``workers``, ``drain``."""

from __future__ import annotations

import argparse
from typing import Any

from matchmaker.cli.common import config_of, ledger_of, send
from matchmaker.ledger import LedgerError
from matchmaker.messages import Drain


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


def cmd_drain(args: argparse.Namespace) -> int:
    send(config_of(args), [Drain(args.worker, on=not args.undo)])
    print(f"{args.worker}: {'undrain' if args.undo else 'drain'} requested")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    workers = sub.add_parser("workers", parents=[common], help="the live worker inventory")
    workers.add_argument("--json", action="store_true")
    workers.set_defaults(func=cmd_workers)

    drain = sub.add_parser("drain", parents=[common], help="stop giving a worker work")
    drain.add_argument("worker")
    drain.add_argument("--undo", action="store_true", help="put the worker back in service")
    drain.set_defaults(func=cmd_drain)
