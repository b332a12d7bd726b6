"""``python -m matchmaker users``: make the role users on the broker, keep their passwords.

``setup`` makes (or updates) the vhost, the core topology, the scheduler, admin
and client users, and any ``--worker``; ``add-worker NAME`` and ``add-client
USER`` add one more; ``remove USER`` deletes one. Each password lives in
``<secrets>/<user>.password`` (0600, the directory 0700): made when missing,
kept otherwise, made anew with ``--rotate``; every run sets the broker's
password of each user it names to its file's, so a changed file (rotated, or
edited by hand) takes effect the next run. Everything reaches ``rabbitmqctl``
as JSON on stdin (``identity.definitions``): no password on a command line.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matchmaker import identity
from matchmaker.identity import IdentityError, Role
from matchmaker.messages import NAME

DEFAULT_VHOST = "matchmaker"
DEFAULT_SECRETS = Path("state/secrets")


@dataclass(frozen=True)
class Made:
    user: str
    role: str
    secret: Path


def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    """``rabbitmqctl -q args`` (``stdin`` fed to it); IdentityError with its first error line."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args], input=stdin, capture_output=True, text=True, timeout=120,
            check=True,
        )  # fmt: skip
    except FileNotFoundError:
        missing = "rabbitmqctl is not installed (apt-get install rabbitmq-server)"
        raise IdentityError(missing) from None
    except subprocess.TimeoutExpired:
        raise IdentityError(f"rabbitmqctl {args[0]} did not answer in 120 s") from None
    except subprocess.CalledProcessError as error:
        lines = (error.stderr or "").strip().splitlines() or [f"exit status {error.returncode}"]
        first = next((line for line in lines if line.startswith("Error")), lines[0])
        raise IdentityError(f"rabbitmqctl {args[0]} failed: {identity.redact(first)}") from None
    return done.stdout


def _check_name(name: str, what: str) -> None:
    if not NAME.fullmatch(name):
        raise IdentityError(f"{what} {name!r} must be 1-128 letters, digits and _ . : @ -")


def apply(
    vhost: str, roles: Sequence[tuple[Role, str]], secrets: Path, *, rotate: bool,
    workers: list[str] | None = None,
) -> list[Made]:  # fmt: skip
    """Import the users of ``roles`` ((role, role name)) with their files' passwords."""
    made, users = [], []
    for role, label in roles:
        path, password = identity.ensure_secret(secrets, role.user, rotate=rotate)
        users.append((role, password))
        made.append(Made(role.user, label, path))
    body = identity.definitions(vhost, users, workers)
    rabbitmqctl("import_definitions", stdin=json.dumps(body))
    return made


def setup(
    vhost: str = DEFAULT_VHOST, secrets: Path = DEFAULT_SECRETS, *, workers: Sequence[str] = (),
    clients: Sequence[str] = (identity.CLIENT,), rotate: bool = False,
    scheduler: str = identity.SCHEDULER, admin: str = identity.ADMIN,
) -> list[Made]:  # fmt: skip
    """The vhost, the topology and every role's user."""
    for name in workers:
        _check_name(name, "worker name")
    for user in (*clients, scheduler, admin):
        _check_name(user, "user name")
    roles: list[tuple[Role, str]] = [
        (identity.scheduler_role(scheduler), "scheduler"),
        (identity.admin_role(admin), "admin"),
    ]
    roles += [(identity.client_role(user), "client") for user in clients]
    roles += [(identity.worker_role(name), f"worker {name}") for name in workers]
    return apply(vhost, roles, secrets, rotate=rotate, workers=list(workers))


def add_worker(
    name: str, vhost: str = DEFAULT_VHOST, secrets: Path = DEFAULT_SECRETS, *, rotate: bool = False
) -> Made:
    """Worker ``name``'s user, its queues and the binding of its cancels."""
    _check_name(name, "worker name")
    role = identity.worker_role(name)
    return apply(vhost, [(role, f"worker {name}")], secrets, rotate=rotate, workers=[name])[0]


def add_client(
    user: str, vhost: str = DEFAULT_VHOST, secrets: Path = DEFAULT_SECRETS, *, rotate: bool = False
) -> Made:
    """One more client user (an admin too if the scheduler's ``admin_users`` lists it)."""
    _check_name(user, "user name")
    if user.startswith(identity.WORKER_PREFIX) or user == identity.SCHEDULER:
        raise IdentityError(f"{user!r} is a reserved name (workers and the scheduler use it)")
    return apply(vhost, [(identity.client_role(user), "client")], secrets, rotate=rotate)[0]


def remove(user: str, secrets: Path = DEFAULT_SECRETS) -> None:
    """Delete the user from the broker (its connections are closed) and its password file."""
    _check_name(user, "user name")
    rabbitmqctl("delete_user", user)
    identity.secret_path(secrets, user).unlink(missing_ok=True)


WORKER_QUEUES_POLICY = "mm-worker-queues-expire"
WORKER_QUEUES_PATTERN = r"^mm\.(worker|control)\."


def expire_worker_queues(vhost: str, seconds: float) -> None:
    """A policy on ``vhost``: a worker's queues (``mm.worker.<name>``, ``mm.control.<name>``)
    unused for ``seconds`` (no consumer, no declare, no get) are deleted by the broker.

    A policy, not an ``x-expires`` argument: the broker refuses a declare whose arguments
    differ from an existing queue's, so a new argument would break every queue made before
    it; a policy applies to existing queues and new ones alike, and nobody's declare changes.
    A queue matched by a policy of higher priority (an operator's) keeps that one instead."""
    definition = json_text({"expires": max(1, round(seconds * 1000))})
    rabbitmqctl(
        "set_policy", "-p", vhost, "--apply-to", "queues", "--priority", "0",
        WORKER_QUEUES_POLICY, WORKER_QUEUES_PATTERN, definition,
    )  # fmt: skip


def json_text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def report(made: Sequence[Made]) -> str:
    return "\n".join(f"{m.role:<20} {m.user:<28} password in {m.secret}" for m in made)
