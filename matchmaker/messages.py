"""Wire messages: versioned JSON, one schema per kind, validated on arrival.

Every message is a JSON object with ``"v": 1`` and a ``"kind"``:

- ``submit`` (TaskRequest, client -> ``mm.requests``): id, type, payload,
  priority, constraints, preferences, max_attempts, timeout. The id is the
  idempotency key: a second submit with the same id changes nothing.
- ``cancel`` / ``drain`` (control, CLI -> ``mm.requests``): a task id / a
  worker name (``"on": false`` undrains).
- ``dispatch`` (TaskDispatch, scheduler -> ``mm.worker.<name>`` or
  ``mm.pull.<type>``): id, attempt, type, payload, deadline (Unix seconds).
- ``result`` (TaskResult, worker -> ``mm.results``): id, attempt, worker,
  state (``running``, ``succeeded``, ``failed``), started_at, finished_at,
  output or error.
- ``results`` (worker -> ``mm.results``): ``"results": [...]``, several
  ``result`` messages in one, as many as a worker's flush has ready (up to
  ``MAX_MESSAGE_BYTES`` in all), so the broker stores one message instead of
  one per task. Each item is checked on its own: an invalid one is refused
  with its index and the others are taken (``decode_results``).

Decoding never raises anything but ``MessageError``, whose text says what is
wrong in one sentence; the caller dead-letters the message with it. JSON is
read and written by orjson: strict RFC 8259 (no ``NaN``, integers within 64
bits, valid UTF-8), several times faster than the standard library here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from matchmaker.models import MAX_PRIORITY, parse_constraints

VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024
MAX_ATTEMPTS = 100
MAX_TIMEOUT = 7 * 24 * 3600.0
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
RESULT_STATES = ("running", "succeeded", "failed")


class MessageError(ValueError):
    """A message that cannot be accepted; the text says why."""


@dataclass(frozen=True)
class TaskRequest:
    id: str
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    constraints: dict[str, Any] = field(default_factory=dict)
    preferences: dict[str, Any] = field(default_factory=dict)
    max_attempts: int = 3
    timeout: float = 3600.0
    kind: str = "submit"


@dataclass(frozen=True)
class Cancel:
    id: str
    kind: str = "cancel"


@dataclass(frozen=True)
class Drain:
    worker: str
    on: bool = True
    kind: str = "drain"


@dataclass(frozen=True)
class TaskDispatch:
    id: str
    attempt: int
    type: str
    payload: dict[str, Any]
    deadline: float
    kind: str = "dispatch"


@dataclass(frozen=True)
class TaskResult:
    id: str
    attempt: int
    worker: str
    state: str
    started_at: float | None = None
    finished_at: float | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    kind: str = "result"


@dataclass(frozen=True)
class ResultBatch:
    """The results of one ``results`` message, and each invalid item as a ``result``
    message of its own with the reason it was refused."""

    results: tuple[TaskResult, ...]
    invalid: tuple[tuple[bytes, str], ...] = ()
    kind: str = "results"


Single = TaskRequest | Cancel | Drain | TaskDispatch | TaskResult
Message = Single | ResultBatch
BATCH_HEAD = b'{"v":%d,"kind":"results","results":[' % VERSION


def encode(message: Single) -> bytes:
    return orjson.dumps({"v": VERSION, **vars(message)}, option=orjson.OPT_NON_STR_KEYS)


def encode_batch(encoded_results: list[bytes]) -> bytes:
    """One ``results`` message from ``result`` messages already encoded (``encode``)."""
    return BATCH_HEAD + b",".join(encoded_results) + b"]}"


def _name(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise MessageError(
            f"'{key}' must be 1-128 characters of letters, digits and _ . : @ - (got {value!r:.60})"
        )
    return value


def _int(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"'{key}' must be an integer from {low} to {high} (got {value!r:.60})")
    return value


def _seconds(body: dict[str, Any], key: str, default: float | None, high: float) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MessageError(f"'{key}' must be a number of seconds (got {value!r:.60})")
    if not 0 <= value <= high:
        raise MessageError(f"'{key}' must be between 0 and {high:g} seconds (got {value})")
    return float(value)


def _object(body: dict[str, Any], key: str, default: dict[str, Any] | None) -> dict[str, Any]:
    value = body.get(key, default)
    if not isinstance(value, dict):
        raise MessageError(f"'{key}' must be a JSON object (got {type(value).__name__})")
    return value


def _request(body: dict[str, Any]) -> TaskRequest:
    task_id, task_type = _name(body, "id"), _name(body, "type")
    constraints = _object(body, "constraints", {})
    preferences = _object(body, "preferences", {})
    try:
        parse_constraints(constraints)
        parse_constraints(preferences)
    except ValueError as error:
        raise MessageError(str(error)) from None
    timeout = _seconds(body, "timeout", 3600.0, MAX_TIMEOUT)
    if not timeout:
        raise MessageError("'timeout' must be more than 0 seconds")
    return TaskRequest(
        id=task_id,
        type=task_type,
        payload=_object(body, "payload", {}),
        priority=_int(body, "priority", 0, 0, MAX_PRIORITY),
        constraints=constraints,
        preferences=preferences,
        max_attempts=_int(body, "max_attempts", 3, 1, MAX_ATTEMPTS),
        timeout=timeout,
    )


def _result(body: dict[str, Any]) -> TaskResult:
    state = body.get("state")
    if state not in RESULT_STATES:
        raise MessageError(f"'state' must be one of {', '.join(RESULT_STATES)} (got {state!r:.60})")
    output = body.get("output")
    if output is not None and not isinstance(output, dict):
        raise MessageError("'output' must be a JSON object or null")
    error = body.get("error")
    if error is not None and not isinstance(error, str):
        raise MessageError("'error' must be a string or null")
    return TaskResult(
        id=_name(body, "id"),
        attempt=_int(body, "attempt", 0, 1, MAX_ATTEMPTS),
        worker=_name(body, "worker"),
        state=state,
        started_at=_seconds(body, "started_at", None, math.inf),
        finished_at=_seconds(body, "finished_at", None, math.inf),
        output=output,
        error=error[:4000] if error else error,
    )


def _results(body: dict[str, Any]) -> ResultBatch:
    items = body.get("results")
    if not isinstance(items, list) or not items:
        raise MessageError("'results' must be a non-empty JSON array of results")
    results, invalid = [], []
    for n, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise MessageError(f"a result must be a JSON object (got {type(item).__name__})")
            results.append(_result(item))
        except MessageError as error:
            single = {"v": VERSION, **item, "kind": "result"} if isinstance(item, dict) else item
            invalid.append((orjson.dumps(single), f"results[{n}]: {error}"))
    return ResultBatch(tuple(results), tuple(invalid))


def _dispatch(body: dict[str, Any]) -> TaskDispatch:
    deadline = _seconds(body, "deadline", None, math.inf)
    if deadline is None:
        raise MessageError("'deadline' is required")
    return TaskDispatch(
        id=_name(body, "id"),
        attempt=_int(body, "attempt", 0, 1, MAX_ATTEMPTS),
        type=_name(body, "type"),
        payload=_object(body, "payload", None),
        deadline=deadline,
    )


def _drain(body: dict[str, Any]) -> Drain:
    on = body.get("on", True)
    if not isinstance(on, bool):
        raise MessageError("'on' must be true or false")
    return Drain(worker=_name(body, "worker"), on=on)


_DECODERS: dict[str, Callable[[dict[str, Any]], Message]] = {
    "submit": _request,
    "cancel": lambda body: Cancel(id=_name(body, "id")),
    "drain": _drain,
    "dispatch": _dispatch,
    "result": _result,
    "results": _results,
}


def decode(raw: bytes, *, expect: tuple[str, ...] | None = None) -> Message:
    """Parse and validate one message; ``expect`` limits the kinds accepted."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MessageError(f"not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise MessageError("a message must be a JSON object")
    if body.get("v") != VERSION:
        raise MessageError(
            f"unsupported message version {body.get('v')!r} (this is version {VERSION})"
        )
    kind = body.get("kind", "submit")
    allowed = expect or tuple(_DECODERS)
    if kind not in allowed:
        raise MessageError(f"unexpected message kind {kind!r} here (expected {', '.join(allowed)})")
    return _DECODERS[kind](body)


def decode_results(raw: bytes) -> ResultBatch:
    """A ``result`` or ``results`` message as a batch (of one, for a single result)."""
    message = decode(raw, expect=("result", "results"))
    if isinstance(message, ResultBatch):
        return message
    assert isinstance(message, TaskResult)
    return ResultBatch((message,))
