"""Shared fixtures: a fresh RabbitMQ vhost per test on the real local broker; and the
selection of tests by what they need.

``tests/unit`` needs nothing outside the process (no broker, no Serf, no PostgreSQL, no
subprocess); ``tests/integration`` talks to real components. A test is marked by what its
fixtures need (``broker``, ``postgres``), and every test under ``tests/integration`` is
marked ``integration``. Without a broker on 127.0.0.1:5672 the integration tests are
skipped with that reason, except under CI (``CI`` set), which runs everything.

Every ``rabbitmqctl`` call boots an Erlang VM (about a second of CPU), so the
vhosts are made and removed in batches: ``import_definitions`` creates
``BATCH`` vhosts with the test user's permissions in one call, and one
``eval`` of ``rabbit_vhost:delete/2`` removes ``BATCH`` used ones (falling
back to ``delete_vhost`` per vhost if that internal call is refused). Each
test still gets a vhost no other test has touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.live_env import vhost_definitions
from matchmaker import identity, users
from tests.pg_support import (  # noqa: F401  (fixtures)
    ledger_url,
    new_ledger_url,
    open_ledgers,
    pg_schemas,
    pg_url,
)

INTEGRATION = Path(__file__).resolve().parent / "integration"
NEEDS = {  # fixture -> the marker of what it needs
    "broker_url": "broker",
    "vhost_pool": "broker",
    "role_users": "broker",
    "pg_url": "postgres",
    "pg_schemas": "postgres",
    "new_ledger_url": "postgres",
}

USER = "matchmaker"
PASSWORD = "matchmaker"
BATCH = 8


def rabbitmqctl(*args: str, stdin: str | None = None) -> None:
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", *args], input=stdin, check=True, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        pytest.fail(f"the local RabbitMQ is not running (start it with scripts/broker.sh): {error}")


class VhostPool:
    """Unused vhosts made ``BATCH`` at a time; used ones deleted ``BATCH`` at a time."""

    def __init__(self) -> None:
        self.prefix = f"mm-test-{uuid.uuid4().hex[:8]}"
        self.made = 0
        self.fresh: list[str] = []
        self.used: list[str] = []

    def take(self) -> str:
        if not self.fresh:
            self._make()
        return self.fresh.pop()

    def give_back(self, vhost: str) -> None:
        self.used.append(vhost)
        if len(self.used) >= BATCH:
            self.delete_used()

    def _make(self) -> None:
        names = [f"{self.prefix}-{self.made + i:03d}" for i in range(BATCH)]
        self.made += BATCH
        rabbitmqctl("import_definitions", stdin=vhost_definitions(names, USER))
        self.fresh = names[::-1]

    def delete_used(self) -> None:
        if not self.used:
            return
        names, self.used = self.used, []
        binaries = ", ".join(f'<<"{name}">>' for name in names)
        try:
            rabbitmqctl("eval", f'[rabbit_vhost:delete(V, <<"tests">>) || V <- [{binaries}]].')
        except pytest.fail.Exception:
            for name in names:
                rabbitmqctl("delete_vhost", name)

    def close(self) -> None:
        self.used += self.fresh
        self.fresh = []
        self.delete_used()


@pytest.fixture(scope="session")
def vhost_pool() -> Iterator[VhostPool]:
    pool = VhostPool()
    yield pool
    pool.close()


@pytest.fixture
def broker_url(vhost_pool: VhostPool) -> Iterator[str]:
    """An AMQP URL for a vhost made for this test alone, deleted afterwards."""
    vhost = vhost_pool.take()
    yield f"amqp://{USER}:{PASSWORD}@127.0.0.1:5672/{vhost}"
    vhost_pool.give_back(vhost)


class RoleUsers:
    """Least-privilege users of every role (``matchmaker.identity``) on one test's vhost,
    named uniquely for the test: made in one ``import_definitions``, deleted afterwards."""

    def __init__(self, broker_url: str, secrets: Path) -> None:
        self.vhost = broker_url.rsplit("/", 1)[1]
        self.secrets = secrets
        tag = uuid.uuid4().hex[:8]
        self.scheduler = f"mm-scheduler-{tag}"
        self.admin = f"mm-admin-{tag}"
        self.clients = (f"mm-client-{tag}-a", f"mm-client-{tag}-b")
        self.workers = (f"w{tag}-a", f"w{tag}-b")
        self.made: list[str] = []

    def make(self) -> RoleUsers:
        roles = [
            (identity.scheduler_role(self.scheduler), "scheduler"),
            (identity.admin_role(self.admin), "admin"),
            *[(identity.client_role(user), "client") for user in self.clients],
            *[(identity.worker_role(name), "worker") for name in self.workers],
        ]
        self.made = [role.user for role, _ in roles]
        try:
            users.apply(self.vhost, roles, self.secrets, rotate=False, workers=list(self.workers))
        except identity.IdentityError as error:
            pytest.fail(str(error))
        return self

    def url(self, user: str) -> str:
        password = identity.read_secret(identity.secret_path(self.secrets, user))
        return identity.with_password(f"amqp://{user}@127.0.0.1:5672/{self.vhost}", password)

    def worker_url(self, name: str) -> str:
        return self.url(identity.worker_user(name))

    def delete(self) -> None:
        names = ", ".join(f'<<"{user}">>' for user in self.made)
        try:
            rabbitmqctl(
                "eval",
                f'[rabbit_auth_backend_internal:delete_user(U, <<"tests">>) || U <- [{names}]].',
            )
        except pytest.fail.Exception:
            for user in self.made:
                rabbitmqctl("delete_user", user)


@pytest.fixture
def role_users(broker_url: str, tmp_path: Path) -> Iterator[RoleUsers]:
    """Per-role broker users for this test's vhost, with password files under tmp_path."""
    made = RoleUsers(broker_url, tmp_path / "secrets").make()
    try:
        yield made
    finally:
        made.delete()


def _broker_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip: pytest.MarkDecorator | None = None
    checked = False
    for item in items:
        for fixture in set(NEEDS) & set(getattr(item, "fixturenames", ())):
            item.add_marker(NEEDS[fixture])
        if INTEGRATION not in item.path.parents:
            continue
        item.add_marker("integration")
        if not checked:
            checked = True
            if not (os.environ.get("CI") or _broker_answers()):
                reason = "no RabbitMQ on 127.0.0.1:5672 (scripts/broker.sh start); CI runs these"
                skip = pytest.mark.skip(reason=reason)
        if skip is not None:
            item.add_marker(skip)
