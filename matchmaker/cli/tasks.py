"""The task commands: ``submit``, ``status``, ``explain``, ``cancel``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from matchmaker.cli.common import UserError, config_of, ledger_of, send, when
from matchmaker.messages import Cancel, MessageError, TaskRequest, decode


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
    for r in requests:
        print(r.id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ledger = ledger_of(config_of(args))
    row = ledger.get(args.task_id)
    if row is None:
        raise UserError(f"no task {args.task_id!r} in the ledger")
    history = ledger.history(args.task_id)
    if args.json:
        print(json.dumps({**vars(row), "history": history}, indent=2))
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
        print(f"{row.id} is {row.state}{where}, not waiting")
    elif row.not_before > time.time():
        print(f"{row.id} waits for its retry backoff until {when(row.not_before)}")
    else:
        print(f"{row.id} is pending: {row.reason or 'not yet considered by a round'}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    send(config_of(args), [Cancel(args.task_id)])
    print(f"{args.task_id}: cancel requested")
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
    submit.set_defaults(func=cmd_submit)

    for name, func, text in (
        ("status", cmd_status, "a task's state, attempts, worker, timestamps, error"),
        ("explain", cmd_explain, "why a task is still pending"),
        ("cancel", cmd_cancel, "cancel a task"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("task_id")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
