"""``python -m matchmaker ledger prune|archive|info|grants``: the ledger by hand.

``prune`` and ``archive`` delete finished tasks older than ``--before`` (a UTC
date and time) or ``--older-than`` seconds (default: ``ledger_retention``),
in committed batches, beside a running scheduler (its role needs DELETE);
``archive`` first appends them to ``--out`` as JSON lines. ``info`` shows the
leader epoch, its holder and the task counts. ``grants`` prints the SQL that
makes a read-only PostgreSQL role for the CLI (``docs/operations.md``).
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from matchmaker.config import ConfigError, load
from matchmaker.ledger import open_ledger
from matchmaker.ledger.retention import archive, prune

TABLES = ("tasks", "transitions", "task_logs", "drained", "leader", "schema_version")
ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def add_actions(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    when = argparse.ArgumentParser(add_help=False)
    group = when.add_mutually_exclusive_group()
    group.add_argument("--before", help="finished before this UTC time (2026-12-01T00:00:00)")
    group.add_argument(
        "--older-than", dest="older_than", type=float, help="seconds (default ledger_retention)"
    )
    p = actions.add_parser("prune", parents=[common, when], help="delete old finished tasks")
    p.set_defaults(func=cmd_prune)
    a = actions.add_parser(
        "archive", parents=[common, when], help="append old finished tasks to a file, then delete"
    )
    a.add_argument("--out", required=True, type=Path, help="JSON lines file (appended, 0600)")
    a.set_defaults(func=cmd_archive)
    i = actions.add_parser("info", parents=[common], help="leader epoch and holder, task counts")
    i.set_defaults(func=cmd_info)
    g = actions.add_parser("grants", help="SQL for a read-only PostgreSQL role (the CLI's)")
    g.add_argument("--role", default="mm_reader", help="the role's name (default mm_reader)")
    g.add_argument("--schema", default="public", help="the ledger's schema (default public)")
    g.add_argument("--database", default="matchmaker", help="the database (default matchmaker)")
    g.set_defaults(func=cmd_grants)


def cutoff(before: str | None, older_than: float | None, retention: float) -> float:
    """The time (epoch seconds) before which a finished task goes."""
    if before:
        try:
            moment = datetime.fromisoformat(before.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--before {before!r} is not a date and time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    seconds = retention if older_than is None else older_than
    if not seconds >= 0:
        raise ConfigError("--older-than must be >= 0 seconds")
    return time.time() - seconds


def cmd_prune(args: argparse.Namespace) -> int:
    config = load(args.config, _flags(args))
    before = cutoff(args.before, args.older_than, config.ledger_retention)
    ledger = open_ledger(config)
    try:
        gone = prune(ledger, before)
    finally:
        ledger.close()
    print(f"pruned {gone} tasks finished before {_when(before)}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    config = load(args.config, _flags(args))
    before = cutoff(args.before, args.older_than, config.ledger_retention)
    ledger = open_ledger(config)
    try:
        done = archive(ledger, before, args.out)
    finally:
        ledger.close()
    print(f"archived {done} tasks finished before {_when(before)} to {args.out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    config = load(args.config, _flags(args))
    ledger = open_ledger(config, readonly=True)
    try:
        epoch, holder, at = ledger.leader()
        counts = ledger.counts()
    finally:
        ledger.close()
    print(f"ledger    {ledger.location}")
    print(f"leader    epoch {epoch}, {holder or '-'} since {_when(at) if at else '-'}")
    print("tasks     " + (", ".join(f"{s} {n}" for s, n in sorted(counts.items())) or "none"))
    return 0


def cmd_grants(args: argparse.Namespace) -> int:
    for name, value in (("--role", args.role), ("--schema", args.schema)):
        if not ROLE.fullmatch(value):
            raise ConfigError(f"{name} must be a plain lower-case SQL name, not {value!r}")
    if not ROLE.fullmatch(args.database):
        raise ConfigError(f"--database must be a plain lower-case SQL name, not {args.database!r}")
    tables = ", ".join(f"{args.schema}.{t}" for t in TABLES)
    print(
        f"-- a read-only role for `python -m matchmaker status|explain|workers|ledger info`\n"
        f"CREATE ROLE {args.role} LOGIN PASSWORD NULL;  -- then: \\password {args.role}\n"
        f"GRANT CONNECT ON DATABASE {args.database} TO {args.role};\n"
        f"GRANT USAGE ON SCHEMA {args.schema} TO {args.role};\n"
        f"GRANT SELECT ON {tables} TO {args.role};\n"
        f"ALTER ROLE {args.role} SET default_transaction_read_only = on;"
    )
    return 0


def _flags(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k, v in vars(args).items() if k not in ("command", "func", "action")}


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
