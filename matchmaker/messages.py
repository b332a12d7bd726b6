"""Wire messages: versioned JSON, one schema per kind, validated on arrival.

Every message is a JSON object with ``"v": 1`` and a ``"kind"``:

- ``submit`` (TaskRequest, client -> ``mm.requests``): id, type, payload,
  priority, constraints, preferences, max_attempts, timeout. The id is the
  idempotency key: a second submit with the same id changes nothing.
- ``cancel`` / ``retry`` / ``drain`` (control, CLI or API -> ``mm.requests``): a task
  id / a dead or cancelled task's id / a worker name (``"on": false`` undrains; a
  ``deadline`` in seconds moves what still runs there elsewhere when it passes).
- ``dispatch`` (TaskDispatch, scheduler -> ``mm.worker.<name>`` or
  ``mm.pull.<type>``): id, attempt, type, payload, deadline (Unix seconds).
- ``dispatches`` (scheduler -> ``mm.worker.<name>``): ``"dispatches": [...]``,
  the dispatches one round places on one worker, in one message.
- ``result`` (TaskResult, worker -> ``mm.results``): id, attempt, worker,
  state (``running``, ``succeeded``, ``failed``), started_at, finished_at,
  output or error, received_at (when the worker took the dispatch off its
  queue; optional, absent from older workers), and logs (the tail of the
  attempt's captured output, at most ``MAX_LOG_CHARS`` characters kept;
  optional, absent from older workers and from running reports).
- ``results`` (worker -> ``mm.results``): ``"results": [...]``, the results
  a worker's flush has ready, in one message.
- ``status`` (client -> ``mm.requests``): ``"ids": [...]`` (1 to ``MAX_STATUS_IDS``
  task ids) and an optional ``ref``: the scheduler answers with a notice per id.
- ``notice`` / ``notices`` (scheduler -> the ``mm.notices`` topic exchange, routing key
  the owner's broker user): id, state, attempt, worker, at, output, error, ref. A task's
  final state (``succeeded`` with its output, ``dead`` with its error, ``cancelled``), a
  refused submit (``rejected``, the reason as error), or the answer to a ``status``
  (any state, or ``unknown``; ``ref`` echoes the request's).

A batch (``dispatches``, ``results``) holds whole messages of the single kind
and is packed up to ``MAX_MESSAGE_BYTES`` (``pack``), so the broker stores one
message instead of one per task; a lone item travels as itself. Each item is
checked on its own: an invalid one is refused with its index and the others
are taken (``decode_batch``).

Decoding never raises anything but ``MessageError``, whose text says what is
wrong in one sentence; the caller dead-letters the message with it. The text
describes a bad value in bounded form (``show``), never its full ``repr``.
JSON is read and written by orjson: strict RFC 8259 (no ``NaN``, integers
within 64 bits, valid UTF-8), several times faster than the standard library
here. A message nests at most ``MAX_DEPTH`` levels of objects and arrays (a
batch's items each count from their own top), checked without recursion:
whatever is accepted can be written again (orjson writes at most 254 levels)
as a dispatch, a batch or a ledger column.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from matchmaker.models import MAX_PRIORITY, parse_constraints

VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024
MAX_ATTEMPTS = 100
MAX_TIMEOUT = 7 * 24 * 3600.0
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
TYPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # what a Serf ``caps`` tag can carry
MAX_LOG_CHARS = 64 * 1024 + 64  # a result's logs: the tail kept (64 KiB and a header line)
RESULT_STATES = ("running", "succeeded", "failed")
NOTICE_STATES = (
    "pending", "assigned", "running", "succeeded", "dead", "cancelled", "rejected", "unknown",
)  # fmt: skip
FINAL_STATES = ("succeeded", "dead", "cancelled", "rejected", "unknown")
MAX_STATUS_IDS = 1000
MAX_DEPTH = 32  # levels of objects and arrays in one message (or one item of a batch)
CONTAINERS = (dict, list)


class MessageError(ValueError):
    """A message that cannot be accepted; the text says why."""


def show(value: Any, limit: int = 60) -> str:
    """A bounded description of a JSON value for an error text: never a full ``repr`` (a
    deep value would exhaust the recursion limit, a long one the log)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, dict):
        return f"a JSON object of {len(value)} keys"
    if isinstance(value, list):
        return f"a JSON array of {len(value)} items"
    return repr(value)[:limit]  # None, a bool or a number


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels (a walk with
    a stack of its own, so no depth can exhaust the interpreter's)."""
    if type(value) not in CONTAINERS:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            if type(child) in CONTAINERS:
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def check_depth(value: Any, what: str, limit: int = MAX_DEPTH) -> None:
    if too_deep(value, limit):
        raise MessageError(f"{what} nests objects and arrays more than {limit} levels deep")


# The messages are values: nothing changes one after it is made. They are not frozen
# dataclasses, whose field-by-field ``object.__setattr__`` more than doubles the cost of
# building one, on the path every task takes.


@dataclass
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


@dataclass
class Cancel:
    id: str
    kind: str = "cancel"


@dataclass
class Retry:
    """A dead or cancelled task runs again, as one more attempt (its owner or an admin)."""

    id: str
    kind: str = "retry"


@dataclass
class Drain:
    worker: str
    on: bool = True
    deadline: float | None = None  # seconds: then what still runs there is moved elsewhere
    kind: str = "drain"


@dataclass
class Status:
    """Ask the scheduler for the state of tasks (their owner's, or any for an admin)."""

    ids: list[str]
    ref: str | None = None
    kind: str = "status"


@dataclass
class TaskDispatch:
    id: str
    attempt: int
    type: str
    payload: dict[str, Any]
    deadline: float
    kind: str = "dispatch"


@dataclass
class TaskResult:
    id: str
    attempt: int
    worker: str
    state: str
    started_at: float | None = None
    finished_at: float | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    received_at: float | None = None
    logs: str | None = None
    kind: str = "result"


@dataclass
class Notice:
    """What the scheduler tells a task's owner: a final state, a refusal, or a status answer."""

    id: str
    state: str
    attempt: int = 0
    worker: str | None = None
    at: float | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    ref: str | None = None
    kind: str = "notice"


Single = TaskRequest | Cancel | Retry | Drain | Status | TaskDispatch | TaskResult | Notice
BATCHES = {"dispatch": "dispatches", "result": "results", "notice": "notices"}  # single -> batch
T = TypeVar("T", TaskDispatch, TaskResult, Notice)
X = TypeVar("X")


@dataclass(frozen=True)
class Batch(Generic[T]):
    """The valid items of a batch, and each invalid one as a message of its own with the
    reason it was refused."""

    kind: str
    items: tuple[T, ...]
    invalid: tuple[tuple[bytes, str], ...] = ()


Message = Single | Batch[TaskDispatch] | Batch[TaskResult] | Batch[Notice]


def encode(message: Single) -> bytes:
    return orjson.dumps({"v": VERSION, **vars(message)}, option=orjson.OPT_NON_STR_KEYS)


def _envelope(kind: str) -> tuple[bytes, bytes]:
    return b'{"v":%d,"kind":"%s","%s":[' % (VERSION, kind.encode(), kind.encode()), b"]}"


def encode_batch(kind: str, encoded: list[bytes]) -> bytes:
    """One ``kind`` batch (``dispatches``, ``results``) of messages already encoded."""
    head, tail = _envelope(kind)
    return head + b",".join(encoded) + tail


def pack(
    kind: str, items: Sequence[X], encoded: list[bytes], limit: int = MAX_MESSAGE_BYTES
) -> list[tuple[Sequence[X], bytes]]:
    """``items``, whose messages are ``encoded``, packed in order into ``kind`` batches of
    at most ``limit`` bytes: (the items, the body) per message. A lone item goes as
    itself, and so does one over the limit, which its receiver refuses as oversize."""
    empty = len(encode_batch(kind, []))
    cuts: list[int] = []  # where each message's items start
    size = 0
    for n, body in enumerate(encoded):
        if not cuts or size + len(body) + 1 > limit:
            cuts.append(n)
            size = empty
        size += len(body) + 1
    packed = []
    for start, end in itertools.pairwise([*cuts, len(encoded)]):
        bodies = encoded[start:end]
        body = bodies[0] if len(bodies) == 1 else encode_batch(kind, bodies)
        packed.append((items[start:end], body))
    return packed


def check_dispatchable(request: TaskRequest) -> None:
    """A request whose dispatch would pass the size limit is refused at intake.

    A dispatch is written out again, compactly, and a number can grow on the
    way (``1e15`` comes back as ``1000000000000000.0``): a request under the
    limit could otherwise make a dispatch every worker refuses, attempt after
    attempt, until the task is dead.
    """
    probe = TaskDispatch(request.id, MAX_ATTEMPTS, request.type, request.payload, 1e10)
    size = len(encode(probe))
    if size > MAX_MESSAGE_BYTES:
        raise MessageError(
            f"its dispatch would be {size} bytes, over the {MAX_MESSAGE_BYTES}-byte limit "
            "(numbers such as 1e15 are written out in full)"
        )


def _name(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise MessageError(
            f"'{key}' must be 1-128 characters of letters, digits and _ . : @ - (got {show(value)})"
        )
    return value


def _int(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"'{key}' must be an integer from {low} to {high} (got {show(value)})")
    return value


def _seconds(body: dict[str, Any], key: str, default: float | None, high: float) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MessageError(f"'{key}' must be a number of seconds (got {show(value)})")
    if not 0 <= value <= high:
        raise MessageError(f"'{key}' must be between 0 and {high:g} seconds (got {value})")
    return float(value)


def _object(body: dict[str, Any], key: str, default: dict[str, Any] | None) -> dict[str, Any]:
    value = body.get(key, default)
    if not isinstance(value, dict):
        raise MessageError(f"'{key}' must be a JSON object (got {type(value).__name__})")
    return value


def _type(body: dict[str, Any]) -> str:
    value = body.get("type")
    if not isinstance(value, str) or not TYPE_NAME.fullmatch(value):
        raise MessageError(
            "'type' must be 1-64 characters of letters, digits and _ . - starting with a "
            f"letter or digit (got {show(value)})"
        )
    return value


def _request(body: dict[str, Any]) -> TaskRequest:
    task_id, task_type = _name(body, "id"), _type(body)
    constraints = _object(body, "constraints", {})
    preferences = _object(body, "preferences", {})
    try:
        parse_constraints(constraints)
        parse_constraints(preferences)
    except ValueError as error:
        raise MessageError(str(error)[:300]) from None
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


def _one_of(body: dict[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    value = body.get(field)
    if value not in allowed:
        raise MessageError(f"'{field}' must be one of {', '.join(allowed)} (got {show(value)})")
    return str(value)


def _optional(body: dict[str, Any], field: str, kind: type, what: str) -> Any:
    value = body.get(field)
    if value is not None and not isinstance(value, kind):
        raise MessageError(f"'{field}' must be {what} or null")
    return value


def _result(body: dict[str, Any]) -> TaskResult:
    state = _one_of(body, "state", RESULT_STATES)
    output = _optional(body, "output", dict, "a JSON object")
    error = _optional(body, "error", str, "a string")
    logs = _optional(body, "logs", str, "a string")
    return TaskResult(
        id=_name(body, "id"),
        attempt=_int(body, "attempt", 0, 1, MAX_ATTEMPTS),
        worker=_name(body, "worker"),
        state=state,
        started_at=_seconds(body, "started_at", None, math.inf),
        finished_at=_seconds(body, "finished_at", None, math.inf),
        output=output,
        error=error[:4000] if error else error,
        received_at=_seconds(body, "received_at", None, math.inf),
        logs=logs[-MAX_LOG_CHARS:] if logs else None,
    )


def _ref(body: dict[str, Any]) -> str | None:
    return None if body.get("ref") is None else _name(body, "ref")


def _status(body: dict[str, Any]) -> Status:
    ids = body.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_STATUS_IDS:
        raise MessageError(f"'ids' must be a JSON array of 1 to {MAX_STATUS_IDS} task ids")
    for n, task_id in enumerate(ids):
        if not isinstance(task_id, str) or not NAME.fullmatch(task_id):
            raise MessageError(f"'ids'[{n}] is not a task id (got {show(task_id)})")
    return Status(ids=ids, ref=_ref(body))


def _notice(body: dict[str, Any]) -> Notice:
    state = _one_of(body, "state", NOTICE_STATES)
    worker = body.get("worker")
    if worker is not None:
        worker = _name(body, "worker")
    output = _optional(body, "output", dict, "a JSON object")
    error = _optional(body, "error", str, "a string")
    return Notice(
        id=_name(body, "id"),
        state=state,
        attempt=_int(body, "attempt", 0, 0, MAX_ATTEMPTS),
        worker=worker,
        at=_seconds(body, "at", None, math.inf),
        output=output,
        error=error,
        ref=_ref(body),
    )


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
    deadline = _seconds(body, "deadline", None, MAX_TIMEOUT)
    if deadline is not None and not on:
        raise MessageError("'deadline' is for a drain only, not with \"on\": false")
    return Drain(worker=_name(body, "worker"), on=on, deadline=deadline)


def _batch(single: str) -> Callable[[dict[str, Any]], Message]:
    decoder, kind = _DECODERS[single], BATCHES[single]

    def decode_items(body: dict[str, Any]) -> Message:
        items = body.get(kind)
        if not isinstance(items, list) or not items:
            raise MessageError(f"'{kind}' must be a non-empty JSON array of {single} messages")
        valid: list[Any] = []
        invalid: list[tuple[bytes, str]] = []
        deep = too_deep(items, MAX_DEPTH + 1)  # one walk; each item only if some is too deep
        for n, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise MessageError(
                        f"a {single} must be a JSON object (got {type(item).__name__})"
                    )
                if deep:
                    check_depth(item, f"a {single}")
                valid.append(decoder(item))
            except MessageError as error:
                invalid.append((_alone(item, single), f"{kind}[{n}]: {error}"))
        return Batch(kind, tuple(valid), tuple(invalid))

    return decode_items


def _alone(item: Any, single: str) -> bytes:
    """An invalid batch item as a message of its own; one too deep to write again is
    described instead."""
    alone = {"v": VERSION, **item, "kind": single} if isinstance(item, dict) else item
    if too_deep(alone, MAX_DEPTH + 1):
        return orjson.dumps({"v": VERSION, "kind": single, "unwritable": show(item)})
    return orjson.dumps(alone)


_DECODERS: dict[str, Callable[[dict[str, Any]], Message]] = {
    "submit": _request,
    "cancel": lambda body: Cancel(id=_name(body, "id")),
    "retry": lambda body: Retry(id=_name(body, "id")),
    "drain": _drain,
    "status": _status,
    "dispatch": _dispatch,
    "result": _result,
    "notice": _notice,
}
_DECODERS.update({BATCHES[single]: _batch(single) for single in BATCHES})
_BATCH_KINDS = frozenset(BATCHES.values())


def decode(
    raw: bytes, *, expect: tuple[str, ...] | None = None, limit: int = MAX_MESSAGE_BYTES
) -> Message:
    """Parse and validate one message; ``expect`` limits the kinds accepted."""
    if len(raw) > limit:
        raise MessageError(f"message is {len(raw)} bytes, over the {limit}-byte limit")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MessageError(f"not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise MessageError("a message must be a JSON object")
    kind = body.get("kind", "submit")
    batch = isinstance(kind, str) and kind in _BATCH_KINDS  # its items are checked one by one
    if not batch and raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:  # else it cannot be deep
        check_depth(body, "the message")
    version = body.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        raise MessageError(
            f"unsupported message version {show(version)} (this is version {VERSION})"
        )
    allowed = expect or tuple(_DECODERS)
    if not isinstance(kind, str) or kind not in allowed:
        raise MessageError(
            f"unexpected message kind {show(kind)} here (expected {', '.join(allowed)})"
        )
    return _DECODERS[kind](body)


def decode_batch(raw: bytes, single: str, limit: int = MAX_MESSAGE_BYTES) -> Batch[Any]:
    """A ``single`` message (``dispatch``, ``result``) or a batch of them, as a batch."""
    message = decode(raw, expect=(single, BATCHES[single]), limit=limit)
    if isinstance(message, Batch):
        return message
    return Batch(BATCHES[single], (message,))


def decode_results(raw: bytes) -> Batch[TaskResult]:
    return decode_batch(raw, "result")


def decode_dispatches(raw: bytes) -> Batch[TaskDispatch]:
    return decode_batch(raw, "dispatch")


def decode_notices(raw: bytes) -> Batch[Notice]:
    """A notice carries a task's output, which a worker's result could carry in up to
    ``MAX_MESSAGE_BYTES``: a lone notice may be a little over that."""
    return decode_batch(raw, "notice", 2 * MAX_MESSAGE_BYTES)
