"""PostgreSQL for the tests: a schema of its own per test on the server that
``scripts/test.sh`` starts (``scripts/postgres.sh``), named by ``MM_TEST_PG_URL``.

Without ``MM_TEST_PG_URL`` the PostgreSQL cases are skipped, except under CI
(``CI`` set), where they fail: CI must run them. With it, a server that does not
answer fails them with the reason.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from matchmaker.ledger import TaskLedger, open_url

PG_ENV = "MM_TEST_PG_URL"
BACKENDS = ("sqlite", "postgresql")


def admin_url() -> str:
    """The test server's URL, or skip (fail under CI) when there is none."""
    url = os.environ.get(PG_ENV, "")
    if not url:
        message = f"{PG_ENV} is not set (scripts/test.sh starts PostgreSQL and sets it)"
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests cannot be skipped in CI: {message}")
        pytest.skip(message)
    return url


def in_schema(url: str, schema: str) -> str:
    """``url`` with its session's search_path set to ``schema``."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} -csearch_path={schema}".strip()
    return urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote))
    )


class Schemas:
    """Fresh schemas on the test server, dropped at the end."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        try:
            self.admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.Error as error:
            pytest.fail(f"PostgreSQL at {PG_ENV} does not answer: {error}".splitlines()[0])
        self.made: list[str] = []

    def make(self) -> str:
        """A new empty schema; returns a URL whose session uses it."""
        name = f"mm_t_{uuid.uuid4().hex[:12]}"
        self.admin.execute(f"CREATE SCHEMA {name}")
        self.made.append(name)
        return in_schema(self.url, name)

    def close(self) -> None:
        for name in self.made:
            self.admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        self.admin.close()


@pytest.fixture
def pg_schemas() -> Iterator[Schemas]:
    schemas = Schemas(admin_url())
    yield schemas
    schemas.close()


@pytest.fixture
def pg_url(pg_schemas: Schemas) -> str:
    """A PostgreSQL ledger URL on a schema made for this test alone."""
    return pg_schemas.make()


@pytest.fixture(params=BACKENDS)
def new_ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A maker of fresh ledger URLs, once per backend: SQLite files under tmp_path,
    PostgreSQL schemas on the test server."""
    if request.param == "sqlite":
        counter = iter(range(1_000_000))
        return lambda: f"sqlite://{tmp_path}/ledger-{next(counter)}.sqlite"
    schemas: Schemas = request.getfixturevalue("pg_schemas")
    return schemas.make


@pytest.fixture
def ledger_url(new_ledger_url: Callable[[], str]) -> str:
    """One fresh ledger URL, once per backend."""
    return new_ledger_url()


@pytest.fixture
def open_ledgers(tmp_path: Path) -> Iterator[Callable[..., TaskLedger]]:
    """``open(url, readonly=False)``: ledgers closed at the end of the test."""
    opened: list[TaskLedger] = []

    def make(url: str, readonly: bool = False) -> TaskLedger:
        ledger = open_url(url, tmp_path, readonly=readonly)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        try:
            ledger.rollback()
        finally:
            ledger.close()
