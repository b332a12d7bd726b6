"""``users``: the broker users of each role (docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from matchmaker import identity
from matchmaker.cli.common import add_json, emit, seconds


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
        emit(args, {"removed": args.name}, f"removed {args.name}")
        return 0
    expiry = getattr(args, "worker_queue_expiry", None)
    if expiry:
        users.expire_worker_queues(args.vhost, expiry)
    value = [{"user": m.user, "role": m.role, "secret": str(m.secret)} for m in made]
    note = f"\nworker queues unused for {expiry:g}s are deleted (policy)" if expiry else ""
    emit(args, {"users": value, "worker_queue_expiry": expiry}, users.report(made) + note)
    return 0


def add_parser(sub: Any) -> None:
    users = sub.add_parser("users", help="make the broker users of each role (docs/security.md)")
    actions = users.add_subparsers(dest="action", required=True)
    place = argparse.ArgumentParser(add_help=False)
    place.add_argument("--vhost", default="matchmaker", help="broker vhost (default matchmaker)")
    place.add_argument(
        "--secrets", default="state/secrets", help="password files go here (default state/secrets)"
    )
    place.add_argument("--rotate", action="store_true", help="new passwords for these users")
    add_json(place)
    setup = actions.add_parser(
        "setup", parents=[place], help="the vhost, topology, scheduler, admin and client users"
    )
    setup.add_argument("--worker", action="append", default=[], help="a worker name (repeatable)")
    setup.add_argument("--client", action="append", help="client users (default mm-client)")
    setup.add_argument("--scheduler-user", default=identity.SCHEDULER, help="default mm-scheduler")
    setup.add_argument("--admin-user", default=identity.ADMIN, help="default mm-admin")
    setup.add_argument(
        "--worker-queue-expiry",
        type=seconds,
        default=86400.0,
        help="a policy deletes worker queues unused this long (default 86400; 0: none)",
    )
    for action, what in (("add-worker", "worker name"), ("add-client", "client user name")):
        one = actions.add_parser(action, parents=[place], help=f"add a {what.split()[0]}")
        one.add_argument("name", help=what)
    remove = actions.add_parser("remove", help="delete a user and its password file")
    remove.add_argument("name", help="the user name")
    remove.add_argument("--secrets", default="state/secrets")
    add_json(remove)
    users.set_defaults(func=cmd_users)
