"""The scheduler's HTTP API and dashboard (``http_port``): Starlette served by uvicorn in a
thread beside the loop.

The loop never waits on it: it hands over an immutable ``Snapshot`` of its live state at
most every ``PUBLISH_INTERVAL`` (``ApiServer.offer``), tasks are read from the ledger
through a read-only handle of the API's own on the ledger the configuration names (SQLite
or PostgreSQL), and every write (submit, cancel,
retry, drain) is a message published to ``mm.requests`` like the CLI's.
"""

from __future__ import annotations


class ApiError(RuntimeError):
    """The API cannot start (a missing package, a bad tokens file); the text says why."""


MISSING = (
    "http_port is set but the HTTP API's packages are not installed: "
    "pip install starlette uvicorn (or the project's 'api' extra)"
)
