"""What the ledger holds and hands out, whatever its backend: task rows, dead letters,
transitions, and its errors.

A task row's JSON columns (``payload``, ``constraints``, ``preferences``, ``output``)
are stored as JSON text (``orjson``), the same in SQLite and PostgreSQL, so a row
reads back the same from either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from matchmaker.messages import TaskRequest

DEAD_BODY_BYTES = 4096  # a dead letter keeps this much of its body, and its size and hash
Owned = tuple[TaskRequest, str]  # a request and its owner
Transition = tuple[str, int, str, str | None, float, str | None]  # id, attempt, state, ...
TASK_COLUMNS = (
    "id", "type", "payload", "priority", "constraints", "preferences", "max_attempts",
    "timeout", "state", "attempt", "worker", "submitted_at", "updated_at", "not_before",
    "assigned_at", "started_at", "finished_at", "output", "error", "reason", "received_at",
    "owner",
)  # fmt: skip
JSON_COLUMNS = ("payload", "constraints", "preferences", "output")
FINISHED = ("succeeded", "dead", "cancelled")


class LedgerError(RuntimeError):
    """The ledger cannot be opened or read, or is not a matchmaker ledger; the text says
    which and why, in one sentence."""


class LeaderLost(LedgerError):
    """Another scheduler took the lead in this ledger (a higher epoch): this one's
    transaction was rolled back, and it must stop writing."""


@dataclass(frozen=True)
class Letter:
    """A rejected message on its way to ``mm.dead``: ``key`` (the SHA-256 of its source
    queue and its origin: the whole body, or for an item of a batch the batch's body and
    the item's place in it) names it for good, so a redelivery of the same message is the
    same letter; ``body`` is its first ``DEAD_BODY_BYTES``, ``size`` and ``sha256`` the
    whole body's."""

    key: str
    source: str
    reason: str
    body: bytes
    size: int
    sha256: str
    at: float

    @classmethod
    def of(
        cls, source: str, body: bytes, reason: str, at: float, origin: bytes | None = None
    ) -> Letter:
        named = source.encode() + b"\0" + (body if origin is None else origin)
        key = hashlib.sha256(named).hexdigest()
        digest = hashlib.sha256(body).hexdigest()
        return cls(key, source, reason[:1000], body[:DEAD_BODY_BYTES], len(body), digest, at)


@dataclass
class TaskRow:
    """A task as the ledger holds it."""

    id: str
    type: str
    payload: dict[str, Any]
    priority: int
    constraints: dict[str, Any]
    preferences: dict[str, Any]
    max_attempts: int
    timeout: float
    state: str
    attempt: int
    worker: str | None
    submitted_at: float
    updated_at: float
    not_before: float
    assigned_at: float | None
    started_at: float | None
    finished_at: float | None
    output: dict[str, Any] | None
    error: str | None
    reason: str | None
    received_at: float | None = None  # when the worker took it off its queue
    owner: str = ""  # the submitter's broker user ('' if unknown)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaskRow:
        values = dict(row)
        for key in JSON_COLUMNS:
            if values[key] is not None:
                values[key] = loads(values[key])
        return cls(**values)

    @classmethod
    def from_values(cls, values: tuple[Any, ...]) -> TaskRow:
        """A row selected as ``TASK_COLUMNS``, in that order."""
        return cls.from_row(dict(zip(TASK_COLUMNS, values, strict=True)))

    def request(self) -> TaskRequest:
        return TaskRequest(
            id=self.id,
            type=self.type,
            payload=self.payload,
            priority=self.priority,
            constraints=self.constraints,
            preferences=self.preferences,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
        )


def loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # written by an older version: NaN or a 65-bit integer
        return json.loads(text)


def dumps(value: Any) -> str:
    return "{}" if value == {} else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
