"""Who may do what on the broker: the roles, their users and rights, and their secrets.

RabbitMQ grants each user, per vhost, three regular expressions over the names
of exchanges and queues: ``configure`` (declare, delete), ``write`` (publish to
an exchange, bind to a queue) and ``read`` (consume from a queue, bind from an
exchange). The roles (docs/security.md has the table):

- scheduler (``mm-scheduler``): everything in the vhost; the only one who
  writes the default exchange, hence worker queues, and ``mm.control``,
  ``mm.dead``, ``mm.events``. In the vhost of RabbitMQ's event exchange
  (``EVENTS_VHOST``, when it is another one) only what ``matchmaker.liveness``
  needs: declare, bind and read server-named queues (``amq.gen-*``) and read
  ``amq.rabbitmq.event``.
- admin (``mm-admin``) and client (``mm-client``, more by ``users add-client``):
  write the ``mm.requests`` exchange; declare, bind and read queues of their own,
  ``mm.inbox.<user>.<word>``, bound to the ``mm.notices`` exchange with their own
  user as the routing key and no other (a topic permission: RabbitMQ checks a
  binding's key against it). What an admin may do beyond a client (cancel anyone's
  task, drain) the scheduler decides from the message's ``user_id``.
- worker ``<name>`` (``mm-worker-<name>``): configure and read its own queues
  ``mm.worker.<name>`` and ``mm.control.<name>``, write the ``mm.results``
  exchange.

Passwords are random, made at setup and kept one per file (mode 0600). The
broker gets them as RabbitMQ's own password hash through ``rabbitmqctl
import_definitions`` on stdin (``rabbit_password_hashing_sha256``: base64 of
a 4-byte salt and SHA-256 of the salt and the password), so no password is
ever an argument of a process.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import orjson

from matchmaker.messages import MessageError
from matchmaker.wire import broker

SCHEDULER = "mm-scheduler"
ADMIN = "mm-admin"
CLIENT = "mm-client"
WORKER_PREFIX = "mm-worker-"
HASHING = "rabbit_password_hashing_sha256"
NOTHING = "^$"
EVENTS_VHOST = "/"  # where rabbitmq_event_exchange publishes unless configured otherwise
PRIVATE_QUEUES = r"^amq\.gen-.*"  # server-named queues
_CREDENTIALS = re.compile(r"""(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@"']*):[^\s/@"']*@""")


class IdentityError(ValueError):
    """A secret or a user cannot be used as asked; the text says which and why."""


def worker_user(name: str) -> str:
    """The broker user of worker ``name``: the only user whose results count for it."""
    return f"{WORKER_PREFIX}{name}"


def _only(*names: str) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


@dataclass(frozen=True)
class Role:
    user: str
    configure: str
    write: str
    read: str
    topics: tuple[tuple[str, str, str], ...] = ()  # (topic exchange, write, read) patterns
    events: bool = False  # also follows the broker's consumer events (the scheduler)

    def permission(self, vhost: str) -> dict[str, str]:
        rights = {"configure": self.configure, "write": self.write, "read": self.read}
        return {"user": self.user, "vhost": vhost, **rights}

    def topic_permissions(self, vhost: str) -> list[dict[str, str]]:
        return [
            {"user": self.user, "vhost": vhost, "exchange": exchange, "write": write, "read": read}
            for exchange, write, read in self.topics
        ]


def scheduler_role(user: str = SCHEDULER) -> Role:
    return Role(user, ".*", ".*", ".*", events=True)


def events_role(user: str) -> Role:
    """The scheduler's rights in the event exchange's vhost: a private queue bound to
    ``amq.rabbitmq.event`` and read, nothing else."""
    read = f"^(amq\\.gen-.*|{re.escape('amq.rabbitmq.event')})$"
    return Role(user, PRIVATE_QUEUES, PRIVATE_QUEUES, read)


def client_role(user: str = CLIENT) -> Role:
    """A client or an admin: publish requests, and read its own notices through inbox
    queues of its own (``broker.inbox_queue``) bound with its own user as the key."""
    inbox = "^" + re.escape(broker.inbox_queue(user, "")) + "[A-Za-z0-9_-]+$"
    return Role(
        user,
        inbox,
        f"{_only(broker.REQUESTS)}|{inbox}",
        f"{_only(broker.NOTICES)}|{inbox}",
        ((broker.NOTICES, NOTHING, _only(user)),),
    )


def worker_role(name: str, user: str | None = None) -> Role:
    own = (broker.worker_queue(name), broker.control_queue(name))
    return Role(user or worker_user(name), _only(*own), _only(broker.RESULTS), _only(*own))


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` hash of ``password``."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def new_password() -> str:
    return secrets.token_urlsafe(24)


# -- secrets on disk -----------------------------------------------------------------


def secret_path(directory: Path, user: str) -> Path:
    return directory / f"{user}.password"


def read_secret(path: Path | str) -> str:
    """A password from its file (one line); refused if others may read the file."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise IdentityError(f"cannot read the password file {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"the password file {path} is readable by others (mode {stat.S_IMODE(mode):o}): "
            "chmod 600 it"
        )
    password = text.strip("\r\n")
    if not password or "\n" in password:
        raise IdentityError(f"the password file {path} must hold one non-empty line")
    return password


def write_secret(path: Path, password: str) -> None:
    """Write ``password`` to ``path`` (mode 0600, its directory 0700), replacing it at once."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    os.replace(temporary, path)


def ensure_secret(directory: Path, user: str, *, rotate: bool = False) -> tuple[Path, str]:
    """The user's password file and password: kept if it exists (unless ``rotate``),
    else made."""
    path = secret_path(directory, user)
    if path.exists() and not rotate:
        return path, read_secret(path)
    password = new_password()
    write_secret(path, password)
    return path, password


# -- URLs ----------------------------------------------------------------------------


def with_password(url: str, password: str | None) -> str:
    """``url`` with its user's password set to ``password`` (None: without one)."""
    parts = urlsplit(url)
    if not parts.username:
        raise IdentityError("a broker password file needs a user name in the broker URL")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    user = quote(unquote(parts.username), safe="")
    secret = "" if password is None else f":{quote(password, safe='')}"
    netloc = f"{user}{secret}@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def resolve_url(url: str, password_file: str | Path | None) -> str:
    """The broker URL to connect with: its password read from ``password_file`` if given."""
    return with_password(url, read_secret(password_file)) if password_file else url


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1:***@", text) if "@" in text else text


def redact_json(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object with every URL password in its strings redacted (JSON text stays
    valid: a match stops at quotes and ``***`` needs no escaping)."""
    raw = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    if b"@" not in raw or b"://" not in raw:
        return value
    cleaned = redact(raw.decode())
    return value if cleaned == raw.decode() else dict(orjson.loads(cleaned))


# -- definitions ---------------------------------------------------------------------


def _queue(vhost: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "durable": True,
        "auto_delete": False,
        "arguments": {"x-queue-type": broker.queue_type(), **arguments},
    }


def _exchange(vhost: str, name: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }


def _binding(vhost: str, exchange: str, queue: str, key: str) -> dict[str, Any]:
    return {
        "source": exchange,
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": key,
        "arguments": {},
    }


INBOX_POLICY = {"expires": 3_600_000, "max-length": 100_000, "overflow": "drop-head"}


def topology(vhost: str, workers: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The core objects (``broker.declare_core``) and each worker's queues and binding, and
    a policy that bounds clients' inbox queues (``INBOX_POLICY``): a client may declare
    them, and one it declares durable and leaves unread would otherwise grow for ever."""
    queues = [
        _queue(vhost, broker.REQUESTS, **{"x-single-active-consumer": True}),
        _queue(vhost, broker.RESULTS),
        _queue(vhost, broker.DEAD, **broker.DEAD_ARGUMENTS),
    ]
    exchanges = [_exchange(vhost, e, "direct") for e in sorted(set(broker.ROUTES.values()))]
    topics = (broker.EVENTS, broker.CONTROL, broker.NOTICES)
    exchanges += [_exchange(vhost, name, "topic") for name in topics]
    bindings = [_binding(vhost, e, q, q) for q, e in broker.ROUTES.items()]
    for name in workers:
        own, control = broker.worker_queue(name), broker.control_queue(name)
        queues += [_queue(vhost, own), _queue(vhost, control)]
        bindings.append(_binding(vhost, broker.CONTROL, control, f"cancel.{name}"))
    policy = {
        "vhost": vhost, "name": "mm-inbox", "pattern": "^" + re.escape(broker.INBOX_PREFIX),
        "apply-to": "queues", "definition": INBOX_POLICY, "priority": 0,
    }  # fmt: skip
    return {"queues": queues, "exchanges": exchanges, "bindings": bindings, "policies": [policy]}


def _user(name: str, password: str) -> dict[str, Any]:
    return {"name": name, "password_hash": password_hash(password), "hashing_algorithm": HASHING,
            "tags": []}  # fmt: skip


def definitions(
    vhost: str,
    users: list[tuple[Role, str]],
    workers: list[str] | None = None,
    events_vhost: str = EVENTS_VHOST,
) -> dict[str, Any]:
    """``rabbitmqctl import_definitions`` input: the vhost, the users (password hashes) with
    their rights (a scheduler's also in ``events_vhost``, ``events_role``), and, with
    ``workers``, the topology for them. An existing user's password and rights are
    replaced by these."""
    permissions = [role.permission(vhost) for role, _ in users]
    if events_vhost and events_vhost != vhost:
        permissions += [
            events_role(role.user).permission(events_vhost) for role, _ in users if role.events
        ]
    out: dict[str, Any] = {
        "vhosts": [{"name": vhost}],
        "users": [_user(role.user, password) for role, password in users],
        "topic_permissions": [t for role, _ in users for t in role.topic_permissions(vhost)],
        "permissions": permissions,
    }
    if workers is not None:
        out.update(topology(vhost, workers))
    return out


# -- senders -------------------------------------------------------------------------


@dataclass(frozen=True)
class Senders:
    """What the scheduler lets a message's sender (its AMQP ``user_id``, which RabbitMQ
    has checked against the sender's login) do.

    ``required``: a message without ``user_id`` is refused; else it is anonymous
    (owner ``''``) and trusted. ``trusted`` users may report for any worker and act
    as admins (the single-user development setup); ``admins`` may cancel anyone's
    task and drain workers. Anyone else reports only for the worker whose broker
    user it is, and cancels only its own tasks.
    """

    required: bool = True
    admins: frozenset[str] = frozenset({ADMIN})
    trusted: frozenset[str] = frozenset()

    def owner(self, user: str | None) -> str:
        """Who sent a message: its user, '' if anonymous; MessageError if that is refused."""
        if user is not None:
            return user
        if self.required:
            raise MessageError(
                "the message has no user_id: this scheduler requires authenticated senders"
            )
        return ""

    def privileged(self, owner: str) -> bool:
        """Trusted (or anonymous where that is allowed): any worker, any owner."""
        return owner in self.trusted or (owner == "" and not self.required)

    def admin(self, owner: str) -> bool:
        return owner in self.admins or self.privileged(owner)

    def reporting(self, owner: str, worker: str) -> str | None:
        """Why ``owner`` may not report for ``worker``, or None if it may."""
        if owner == worker_user(worker) or self.privileged(owner):
            return None
        return f"sent by {owner!r}: only {worker_user(worker)!r} reports for worker {worker}"
