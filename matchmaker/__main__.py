"""``python -m matchmaker``: run the scheduler, submit and inspect tasks, manage workers.

Every failure a user can cause or meet (bad arguments, unreachable broker or
agent, missing ledger, invalid task) ends with one sentence on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matchmaker import __version__, identity, logs
from matchmaker.api import ApiError
from matchmaker.config import Config, ConfigError, load
from matchmaker.identity import IdentityError
from matchmaker.ledger import LeaderLost, LedgerError, TaskLedger, open_ledger
from matchmaker.messages import Cancel, Drain, MessageError, Single, TaskRequest, decode, encode
from matchmaker.wire import amqp, broker
from membership.errors import MembershipError

EXIT_USAGE = 2
EXIT_DEPOSED = 3  # another scheduler took the lead in the ledger


class UserError(Exception):
    """An error the user can fix; printed as one sentence."""


def _config(args: argparse.Namespace) -> Config:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    return load(args.config, flags)


def cmd_users(args: argparse.Namespace) -> int:
    from matchmaker import users

    secrets = Path(args.secrets)
    if args.action == "setup":
        made = users.setup(
            args.vhost, secrets, workers=args.worker, clients=args.client or [identity.CLIENT],
            rotate=args.rotate, scheduler=args.scheduler_user, admin=args.admin_user,
        )  # fmt: skip
    elif args.action == "add-worker":
        made = [users.add_worker(args.name, args.vhost, secrets, rotate=args.rotate)]
    elif args.action == "add-client":
        made = [users.add_client(args.name, args.vhost, secrets, rotate=args.rotate)]
    else:
        users.remove(args.name, secrets)
        print(f"removed {args.name}")
        return 0
    print(users.report(made))
    return 0


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


def _send(config: Config, messages: Sequence[Single]) -> None:
    broker.send_requests(
        config.broker_url,
        map(encode, messages),
        name="matchmaker-cli",
        tls=broker.TLSFiles.of(config),
    )


def cmd_run(args: argparse.Namespace) -> int:
    from matchmaker.service import Scheduler

    config = _config(args).with_serf_auth()
    logs.setup(config.log_format, config.log_level)
    logging.getLogger(amqp.LOG).setLevel(logging.CRITICAL)  # a lost broker: one line of ours
    Scheduler(config).run()
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    config = _config(args)
    requests = list(_requests_from(args))
    _send(config, requests)
    for r in requests:
        print(r.id)
    _warn_types(config, {r.type for r in requests})
    return 0


def _warn_types(config: Config, types: set[str]) -> None:
    from matchmaker import advertised

    live = advertised.advertised(config)
    for line in advertised.warnings(types, live, config.task_types):
        print(f"matchmaker: warning: {line}", file=sys.stderr)


def cmd_logs(args: argparse.Namespace) -> int:
    ledger = _ledger(_config(args))
    if ledger.get(args.task_id) is None:
        raise UserError(f"no task {args.task_id!r} in the ledger")
    entries = ledger.logs(args.task_id, args.attempt)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        which = f"attempt {args.attempt} of " if args.attempt is not None else ""
        raise UserError(f"no logs kept for {which}{args.task_id} (none written, or not yet in)")
    for entry in entries:
        worker = f" on {entry['worker']}" if entry["worker"] else ""
        print(f"--- attempt {entry['attempt']}{worker}, {_when(entry['at'])} ---")
        text = entry["text"]
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _ledger(config: Config) -> TaskLedger:
    return open_ledger(config, readonly=True)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def cmd_status(args: argparse.Namespace) -> int:
    ledger = _ledger(_config(args))
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
    print(f"submitted {_when(row.submitted_at)}")
    print(f"assigned  {_when(row.assigned_at)}")
    print(f"received  {_when(row.received_at)}")
    print(f"started   {_when(row.started_at)}")
    print(f"finished  {_when(row.finished_at)}")
    if row.error:
        print(f"error     {row.error}")
    if row.output is not None:
        print(f"output    {json.dumps(row.output)}")
    for h in history:
        note = f"  ({h['note']})" if h["note"] else ""
        worker = h["worker"] or ""
        print(f"  {_when(h['at'])}  attempt {h['attempt']}  {h['state']:<18} {worker}{note}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    row = _ledger(_config(args)).get(args.task_id)
    if row is None:
        raise UserError(f"no task {args.task_id!r} in the ledger")
    if row.state != "pending":
        where = f" on worker {row.worker}" if row.worker else ""
        print(f"{row.id} is {row.state}{where}, not waiting")
    elif row.not_before > time.time():
        print(f"{row.id} waits for its retry backoff until {_when(row.not_before)}")
    else:
        print(f"{row.id} is pending: {row.reason or 'not yet considered by a round'}")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    from membership.table import fetch_workers, format_workers

    config = _config(args).with_serf_auth()
    running: dict[str, int] = {}
    drained: set[str] = set()
    try:
        ledger = _ledger(config)
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
    _send(_config(args), [Drain(args.worker, on=not args.undo)])
    print(f"{args.worker}: {'undrain' if args.undo else 'drain'} requested")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    _send(_config(args), [Cancel(args.task_id)])
    print(f"{args.task_id}: cancel requested")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m matchmaker", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"matchmaker {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (also MM_CONFIG)")
    common.add_argument(
        "--broker-url", dest="broker_url", help="amqp(s)://user:pass@host:port/vhost"
    )
    common.add_argument(
        "--broker-ca", dest="broker_ca", help="CA file the broker's certificate must verify against"
    )
    common.add_argument("--broker-cert", dest="broker_cert", help="client certificate (mTLS)")
    common.add_argument("--broker-key", dest="broker_key", help="the client certificate's key")
    common.add_argument(
        "--broker-password-file",
        dest="broker_password_file",
        help="file with the broker URL's password (also MM_BROKER_PASSWORD_FILE)",
    )
    common.add_argument("--serf-rpc", dest="serf_rpc", help="the local Serf agent's RPC address")
    common.add_argument("--serf-auth-key", dest="serf_auth_key", help=argparse.SUPPRESS)
    common.add_argument(
        "--serf-auth-key-file",
        dest="serf_auth_key_file",
        help="0600 file with the Serf RPC auth key (also MM_SERF_AUTH_FILE)",
    )
    common.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="talk to the Serf agent without an RPC auth key",
    )
    common.add_argument("--state-dir", dest="state_dir", help="where the ledger lives")
    common.add_argument(
        "--ledger-url",
        dest="ledger_url",
        help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB (also MM_LEDGER_URL)",
    )
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run the scheduler")
    run.add_argument("--round-interval", dest="round_interval", type=float)
    run.add_argument("--pipeline-depth", dest="pipeline_depth", type=int)
    run.add_argument("--strategy", choices=["spread", "binpack"])
    run.add_argument("--aging-interval", dest="aging_interval", type=float)
    run.add_argument("--metrics-port", dest="metrics_port", type=int)
    run.add_argument("--metrics-bind", dest="metrics_bind", help="Prometheus endpoint address")
    run.add_argument("--http-port", dest="http_port", type=int, help="HTTP API port (0: off)")
    run.add_argument("--http-bind", dest="http_bind", help="HTTP API address")
    run.add_argument("--api-tokens-file", dest="api_tokens_file", help="API bearer tokens")
    run.add_argument("--log-format", dest="log_format", choices=["text", "json"])
    run.add_argument("--log-level", dest="log_level")
    run.add_argument(
        "--trusted-users", dest="trusted_users", help="users who may report for any worker"
    )
    run.add_argument("--admin-users", dest="admin_users", help="users who may cancel any task")
    run.set_defaults(func=cmd_run)

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

    logs_ = sub.add_parser("logs", parents=[common], help="a task's captured output, by attempt")
    logs_.add_argument("task_id")
    logs_.add_argument("--attempt", type=int, help="only this attempt")
    logs_.add_argument("--json", action="store_true")
    logs_.set_defaults(func=cmd_logs)

    workers = sub.add_parser("workers", parents=[common], help="the live worker inventory")
    workers.add_argument("--json", action="store_true")
    workers.set_defaults(func=cmd_workers)

    drain = sub.add_parser("drain", parents=[common], help="stop giving a worker work")
    drain.add_argument("worker")
    drain.add_argument("--undo", action="store_true", help="put the worker back in service")
    drain.set_defaults(func=cmd_drain)
    _users_parser(sub)
    _ledger_parser(sub, common)
    return top


def _ledger_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from matchmaker import ledger_cli

    ledger = sub.add_parser("ledger", help="prune or archive finished tasks; read-only grants")
    ledger_cli.add_actions(ledger, common)


def _users_parser(sub: Any) -> None:
    users = sub.add_parser("users", help="make the broker users of each role (docs/security.md)")
    actions = users.add_subparsers(dest="action", required=True)
    place = argparse.ArgumentParser(add_help=False)
    place.add_argument("--vhost", default="matchmaker", help="broker vhost (default matchmaker)")
    place.add_argument(
        "--secrets", default="state/secrets", help="password files go here (default state/secrets)"
    )
    place.add_argument("--rotate", action="store_true", help="new passwords for these users")
    setup = actions.add_parser(
        "setup", parents=[place], help="the vhost, topology, scheduler, admin and client users"
    )
    setup.add_argument("--worker", action="append", default=[], help="a worker name (repeatable)")
    setup.add_argument("--client", action="append", help="client users (default mm-client)")
    setup.add_argument("--scheduler-user", default=identity.SCHEDULER, help="default mm-scheduler")
    setup.add_argument("--admin-user", default=identity.ADMIN, help="default mm-admin")
    for action, what in (("add-worker", "worker name"), ("add-client", "client user name")):
        one = actions.add_parser(action, parents=[place], help=f"add a {what.split()[0]}")
        one.add_argument("name", help=what)
    remove = actions.add_parser("remove", help="delete a user and its password file")
    remove.add_argument("name", help="the user name")
    remove.add_argument("--secrets", default="state/secrets")
    users.set_defaults(func=cmd_users)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except LeaderLost as error:
        print(f"matchmaker: {error}", file=sys.stderr)
        return EXIT_DEPOSED
    except (
        UserError,
        ConfigError,
        LedgerError,
        broker.BrokerError,
        IdentityError,
        ApiError,
    ) as error:
        print(f"matchmaker: {error}", file=sys.stderr)
    except MembershipError as error:
        print(f"matchmaker: {str(error).splitlines()[0]}", file=sys.stderr)
    except amqp.AMQPError as error:
        print(f"matchmaker: broker error: {error.__class__.__name__} {error}", file=sys.stderr)
    except BrokenPipeError:
        return 0
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"matchmaker: {error.strerror or error}{where}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
