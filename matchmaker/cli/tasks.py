"""The task commands: ``submit``, ``tasks``, ``status``, ``explain``, ``cancel``, ``retry``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from matchmaker.cli.common import (
    UserError,
    add_json,
    config_of,
    emit,
    ledger_of,
    positive_int,
    send,
    when,
)
from matchmaker.config import Config
from matchmaker.ledger import LedgerError
from matchmaker.messages import NAME, Cancel, MessageError, Retry, TaskRequest, decode

STATES = ("pending", "assigned", "running", "succeeded", "dead", "cancelled")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise UserError(f"--payload is not valid JSON ({error}): {text[:60]!r}") from None


def _pairs(items: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what} {item!r} must look like name=value")
        out[key] = _value(value)
    return out


def _requests_from(args: argparse.Namespace) -> Iterator[TaskRequest]:
    """The tasks to submit: from flags, a JSON file, or JSON lines on stdin."""
    if args.file:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        with stream:
            for number, line in enumerate(stream, 1):
                if line.strip():
                    yield _request(line, f"{args.file}:{number}")
        return
    if not args.type:
        raise UserError("submit needs --type (or --file with JSON tasks)")
    body = {
        "v": 1,
        "kind": "submit",
        "id": args.id or uuid.uuid4().hex,
        "type": args.type,
        "payload": _payload(args.payload) if args.payload else {},
        "priority": args.priority,
        "constraints": _pairs(args.constraint, "--constraint"),
        "preferences": _pairs(args.prefer, "--prefer"),
        "max_attempts": args.max_attempts,
        "timeout": args.timeout,
    }
    yield _request(json.dumps(body), "the flags")


def _request(text: str, where: str) -> TaskRequest:
    try:
        body = json.loads(text)
        if isinstance(body, dict):
            body.setdefault("v", 1)
            body.setdefault("kind", "submit")
            body.setdefault("id", uuid.uuid4().hex)
        message = decode(json.dumps(body).encode(), expect=("submit",))
    except (ValueError, MessageError) as error:
        raise UserError(f"invalid task in {where}: {error}") from None
    assert isinstance(message, TaskRequest)
    return message


def cmd_submit(args: argparse.Namespace) -> int:
    config = config_of(args)
    requests = list(_requests_from(args))
    send(config, requests)
    ids = [r.id for r in requests]
    emit(args, {"submitted": ids}, "\n".join(ids))
    _warn_types(config, {r.type for r in requests})
    return 0


def _warn_types(config: Config, types: set[str]) -> None:
    from matchmaker import advertised

    live = advertised.advertised(config)
    for line in advertised.warnings(types, live, config.task_types):
        print(f"matchmaker: warning: {line}", file=sys.stderr)


def cmd_logs(args: argparse.Namespace) -> int:
    ledger = ledger_of(config_of(args))
    if ledger.get(args.task_id) is None:
        raise UserError(f"no task {args.task_id!r} in the ledger")
    entries = ledger.logs(args.task_id, args.attempt)
    if args.json:
        emit(args, entries, "")
        return 0
    if not entries:
        which = f"attempt {args.attempt} of " if args.attempt is not None else ""
        raise UserError(f"no logs kept for {which}{args.task_id} (none written, or not yet in)")
    for entry in entries:
        worker = f" on {entry['worker']}" if entry["worker"] else ""
        print(f"--- attempt {entry['attempt']}{worker}, {when(entry['at'])} ---")
        text = entry["text"]
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _since(text: str) -> float:
    """``--since``: Unix seconds, an ISO 8601 time, or an age such as 90s, 15m, 2h, 1d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
            return time.time() - float(text[:-1]) * units[text[-1]]
        if text.replace(".", "", 1).isdigit():
            return float(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time (Unix seconds, ISO 8601, or an age like 15m, 2h, 1d)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _name(text: str) -> str:
    if not NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not a name (letters, digits, _.:@-)")
    return text


def cmd_tasks(args: argparse.Namespace) -> int:
    """A page of tasks, newest first, with the API's filters (``api.store``)."""
    from matchmaker.api.store import Store, StoreError

    store = Store(config_of(args))
    filters = {
        "state": args.state,
        "type": args.type,
        "worker": args.worker,
        "owner": args.owner,
        "since": args.since,
    }
    try:
        tasks, cursor = store.tasks(filters, args.limit, args.cursor)
    except (StoreError, ValueError) as error:  # ValueError: a cursor no page gave
        raise UserError(str(error)) from None
    finally:
        store.close()
    emit(args, {"tasks": tasks, "next_cursor": cursor}, lambda: _table(tasks, cursor))
    return 0


def _table(tasks: list[dict[str, Any]], cursor: str | None) -> str:
    if not tasks:
        return "no tasks"
    head = ("ID", "TYPE", "STATE", "ATTEMPT", "WORKER", "OWNER", "SUBMITTED")
    rows = [head] + [
        (
            str(t["id"]),
            str(t["type"]),
            str(t["state"]),
            f"{t['attempt']}/{t['max_attempts']}",
            t["worker"] or "-",
            t.get("owner") or "-",
            when(t["submitted_at"]),
        )
        for t in tasks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if cursor:
        lines.append(f"(more: --cursor {cursor})")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    ledger = ledger_of(config_of(args))
    row = ledger.get(args.task_id)
    if row is None:
        raise UserError(f"no task {args.task_id!r} in the ledger")
    history = ledger.history(args.task_id)
    if args.json:
        emit(args, {**vars(row), "history": history}, "")
        return 0
    print(f"task      {row.id} ({row.type}, priority {row.priority})")
    print(f"state     {row.state}")
    print(f"owner     {row.owner or '-'}")
    print(f"attempt   {row.attempt} of {row.max_attempts}")
    print(f"worker    {row.worker or '-'}")
    print(f"submitted {when(row.submitted_at)}")
    print(f"assigned  {when(row.assigned_at)}")
    print(f"received  {when(row.received_at)}")
    print(f"started   {when(row.started_at)}")
    print(f"finished  {when(row.finished_at)}")
    if row.error:
        print(f"error     {row.error}")
    if row.output is not None:
        print(f"output    {json.dumps(row.output)}")
    for h in history:
        note = f"  ({h['note']})" if h["note"] else ""
        worker = h["worker"] or ""
        print(f"  {when(h['at'])}  attempt {h['attempt']}  {h['state']:<18} {worker}{note}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    row = ledger_of(config_of(args)).get(args.task_id)
    if row is None:
        raise UserError(f"no task {args.task_id!r} in the ledger")
    if row.state != "pending":
        where = f" on worker {row.worker}" if row.worker else ""
        text = f"{row.id} is {row.state}{where}, not waiting"
    elif row.not_before > time.time():
        text = f"{row.id} waits for its retry backoff until {when(row.not_before)}"
    else:
        text = f"{row.id} is pending: {row.reason or 'not yet considered by a round'}"
    emit(args, {"id": row.id, "state": row.state, "explanation": text}, text)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    send(config_of(args), [Cancel(args.task_id)])
    emit(
        args, {"id": args.task_id, "state": "cancel requested"}, f"{args.task_id}: cancel requested"
    )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """A dead or cancelled task runs again as one more attempt (the scheduler checks)."""
    row = None
    with contextlib.suppress(LedgerError):  # no ledger here: the scheduler decides alone
        row = ledger_of(config_of(args)).get(args.task_id)
    if row is not None and row.state not in ("dead", "cancelled"):
        raise UserError(
            f"task {row.id!r} is {row.state}: only a dead or cancelled task can be retried"
        )
    send(config_of(args), [Retry(args.task_id)])
    emit(args, {"id": args.task_id, "state": "retry requested"}, f"{args.task_id}: retry requested")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    submit = sub.add_parser("submit", parents=[common], help="submit tasks")
    submit.add_argument("--id", help="task id (the idempotency key; default: a new uuid)")
    submit.add_argument("--type", help="task type")
    submit.add_argument("--payload", help="JSON payload")
    submit.add_argument("--priority", type=int, default=0, help="0-9, higher first")
    submit.add_argument("--constraint", action="append", help="attr=value (JSON values allowed)")
    submit.add_argument("--prefer", action="append", help="attr=value, a soft preference")
    submit.add_argument("--max-attempts", dest="max_attempts", type=int, default=3)
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds per attempt")
    submit.add_argument("--file", help="JSON lines of tasks ('-' for stdin)")
    add_json(submit)
    submit.set_defaults(func=cmd_submit)

    tasks = sub.add_parser("tasks", parents=[common], help="list tasks, newest first")
    tasks.add_argument("--state", choices=STATES)
    tasks.add_argument("--type", type=_name, help="task type")
    tasks.add_argument("--worker", type=_name, help="the worker it ran or runs on")
    tasks.add_argument("--owner", type=_name, help="the broker user who submitted it")
    tasks.add_argument(
        "--since", type=_since, help="submitted since: Unix seconds, ISO 8601, or 15m, 2h, 1d"
    )
    tasks.add_argument("--limit", type=positive_int, default=50, help="a page (default 50)")
    tasks.add_argument("--cursor", help="the next page (printed at the end)")
    add_json(tasks)
    tasks.set_defaults(func=cmd_tasks)

    for name, func, text in (
        ("status", cmd_status, "a task's state, attempts, worker, timestamps, error"),
        ("explain", cmd_explain, "why a task is still pending"),
        ("cancel", cmd_cancel, "cancel a task"),
        ("retry", cmd_retry, "run a dead or cancelled task again (admin or its owner)"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("task_id")
        add_json(p)
        p.set_defaults(func=func)

    logs = sub.add_parser("logs", parents=[common], help="a task's captured output, by attempt")
    logs.add_argument("task_id")
    logs.add_argument("--attempt", type=positive_int, help="only this attempt")
    add_json(logs)
    logs.set_defaults(func=cmd_logs)
