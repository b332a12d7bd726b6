"""The worker tag schema: how a worker advertises itself in Serf tags, and the strict reader.

A worker's agent carries compact tags, for example::

    role=worker  q=mm.worker.w7  caps=data_staging,env_setup  slots=4  site=iu  gpu=0

- ``role=worker`` marks a worker; members with any other role (the
  scheduler's own agent has ``role=scheduler``) are simply not workers.
- ``q`` is the worker's own queue and must be ``mm.worker.<name>`` (the
  default when absent): member names are unique, so no worker can point the
  scheduler's pushes at another worker's queue or at a system queue.
- ``caps`` lists the task types it runs, comma-separated; ``slots`` how many
  tasks it runs at once.
- Every other tag is an attribute that constraints and preferences match:
  integers and decimals become numbers, anything else stays a string.

Tags from gossip are untrusted. Names, capabilities, keys and values must use
a small safe character set, numbers must be finite, slots are clamped to
0..MAX_SLOTS, and the reserved attribute names (``name`` is the engine's
pseudo-attribute) are refused. Serf caps a member's tags at 512 bytes: one
marker byte plus the msgpack encoding of the map.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import msgpack

from membership.errors import TagError

ROLE = "role"
WORKER_ROLE = "worker"
QUEUE = "q"
CAPS = "caps"
SLOTS = "slots"
PERF = "perf"  # relative speed, 1 = the reference machine; absent means 1
SCHEMA_KEYS = frozenset({ROLE, QUEUE, CAPS, SLOTS, PERF})
RESERVED = frozenset({"name", "running", "free", "status"})
QUEUE_PREFIX = "mm.worker."

MIN_SPEED = 1 / 64  # the range of ``perf``: the engine's (matchmaker.models), checked by a test
MAX_SPEED = 64.0
SERF_TAG_LIMIT = 512
MAX_SLOTS = 1024
MAX_ATTRIBUTES = 32
MAX_NUMBER_DIGITS = 18

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
_INT = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")

Scalar = str | int | float


@dataclass(frozen=True, slots=True)
class Advertised:
    """What a worker advertises, validated: its name, the task types it runs, its slots, its
    attributes and its relative speed (1 = the reference machine). The scheduler turns it
    into the engine's ``Worker``; membership knows nothing of the engine."""

    name: str
    capabilities: frozenset[str]
    slots: int
    attributes: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    perf: float = 1.0


class WorkerInfo(NamedTuple):
    """A decoded worker advertisement: what it advertises, its queue, and any clamping notes."""

    worker: Advertised
    queue: str
    notes: tuple[str, ...] = ()


def encoded_size(tags: Mapping[str, str]) -> int:
    """Bytes Serf counts against its 512-byte limit for these tags."""
    return 1 + len(msgpack.packb(dict(tags), use_bin_type=False))


def _safe_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise TagError(f"{what} {value!r} is not a safe name ([A-Za-z0-9_.-], 1-64 characters)")
    return value


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TagError(f"attribute {key!r}: {value!r} is not a finite number")
        text = str(int(value)) if value.is_integer() and abs(value) < 1e18 else repr(value)
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise TagError(
            f"attribute {key!r}: expected a string or a number, got {type(value).__name__}"
        )
    _parse_value(key, text)  # refuse what the reader would refuse
    return text


def _parse_value(key: str, text: str) -> Scalar:
    if not _VALUE.fullmatch(text):
        raise TagError(
            f"attribute {key!r}: value {text!r} has unsafe characters or is empty or too long "
            "(allowed: A-Z a-z 0-9 _ . : / @ + -, 1-128 characters)"
        )
    if _INT.fullmatch(text):
        if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
            raise TagError(f"attribute {key!r}: number {text[:24]!r}... is too large")
        return int(text)
    if _DECIMAL.fullmatch(text):
        number = float(text)
        if not math.isfinite(number):
            raise TagError(f"attribute {key!r}: {text!r} is not a finite number")
        return int(number) if number.is_integer() and abs(number) < 1e18 else number
    return text


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise TagError(f"tag key {key!r} is not safe ([A-Za-z_] then [A-Za-z0-9_.-], up to 64)")
    if key in RESERVED:
        raise TagError(f"tag key {key!r} is reserved")
    return key


def encode_worker_tags(
    name: str,
    capabilities: Iterable[str],
    slots: int,
    attributes: Mapping[str, Any] | None = None,
    queue: str | None = None,
    perf: float = 1.0,
) -> dict[str, str]:
    """The Serf tags advertising this worker; TagError if they are unsafe or exceed 512 bytes."""
    _safe_name(name, "worker name")
    caps = sorted({_safe_name(c, "capability") for c in capabilities})
    if not caps:
        raise TagError(f"worker {name!r}: needs at least one capability")
    if isinstance(slots, bool) or not isinstance(slots, int) or not 0 <= slots <= MAX_SLOTS:
        raise TagError(f"worker {name!r}: slots must be an integer 0..{MAX_SLOTS}, got {slots!r}")
    own = QUEUE_PREFIX + name
    if queue not in (None, own):
        raise TagError(f"worker {name!r}: queue {queue!r} must be its own queue {own!r}")
    queue = own
    attributes = dict(attributes or {})
    if len(attributes) > MAX_ATTRIBUTES:
        raise TagError(f"worker {name!r}: {len(attributes)} attributes, at most {MAX_ATTRIBUTES}")
    tags = {ROLE: WORKER_ROLE, QUEUE: queue, CAPS: ",".join(caps), SLOTS: str(slots)}
    if isinstance(perf, bool) or not isinstance(perf, int | float):
        raise TagError(f"worker {name!r}: perf must be a number, got {perf!r}")
    if not (math.isfinite(perf) and MIN_SPEED <= perf <= MAX_SPEED):
        raise TagError(f"worker {name!r}: perf must be from {MIN_SPEED:g} to {MAX_SPEED:g}")
    if perf != 1.0:
        tags[PERF] = f"{perf:g}"
    for key in sorted(attributes):
        if key in SCHEMA_KEYS:
            raise TagError(f"worker {name!r}: attribute {key!r} clashes with a schema tag")
        tags[_check_key(key)] = _format_value(key, attributes[key])
    size = encoded_size(tags)
    if size > SERF_TAG_LIMIT:
        raise TagError(
            f"worker {name!r}: its tags take {size} bytes, over Serf's {SERF_TAG_LIMIT}-byte "
            "limit; shorten names or drop attributes"
        )
    return tags


def is_worker(tags: Mapping[str, str]) -> bool:
    """Whether these tags claim to be a worker (whether or not they are valid)."""
    return tags.get(ROLE) == WORKER_ROLE


def decode_worker(member_name: str, tags: Mapping[str, str]) -> WorkerInfo | None:
    """The worker a member advertises, None if it is not a worker, TagError if its tags are bad."""
    if not is_worker(tags):
        return None
    name = _safe_name(member_name, "member name")
    if len(tags) > MAX_ATTRIBUTES + len(SCHEMA_KEYS):
        raise TagError(f"{len(tags)} tags, at most {MAX_ATTRIBUTES + len(SCHEMA_KEYS)}")
    notes: list[str] = []

    caps_text = tags.get(CAPS)
    if not caps_text:
        raise TagError(f"missing the {CAPS!r} tag (comma-separated task types)")
    caps = frozenset(_safe_name(c, "capability") for c in caps_text.split(","))

    slots_text = tags.get(SLOTS)
    if slots_text is None:
        raise TagError(f"missing the {SLOTS!r} tag")
    if not _INT.fullmatch(slots_text) or len(slots_text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise TagError(f"slots {slots_text[:32]!r} is not an integer")
    slots = int(slots_text)
    if not 0 <= slots <= MAX_SLOTS:
        clamped = min(max(slots, 0), MAX_SLOTS)
        notes.append(f"slots {slots} clamped to {clamped}")
        slots = clamped

    perf: float = 1.0
    perf_text = tags.get(PERF)
    if perf_text is not None:
        if not _DECIMAL.fullmatch(perf_text) or len(perf_text) > 32:
            raise TagError(f"perf {perf_text[:32]!r} is not a decimal number")
        perf = float(perf_text)
        if not math.isfinite(perf) or not MIN_SPEED <= perf <= MAX_SPEED:
            bounded = min(max(perf, MIN_SPEED), MAX_SPEED) if math.isfinite(perf) else 1.0
            notes.append(f"perf {perf_text[:32]} clamped to {bounded:g}")
            perf = bounded

    queue = QUEUE_PREFIX + name
    if tags.get(QUEUE, queue) != queue:
        raise TagError(f"queue {tags[QUEUE][:80]!r} is not this worker's own queue {queue!r}")

    attributes: dict[str, Scalar] = {}
    for key, value in tags.items():
        if key in SCHEMA_KEYS:
            continue
        attributes[_check_key(key)] = _parse_value(key, value)
    worker = Advertised(name, caps, slots, MappingProxyType(attributes), perf)
    return WorkerInfo(worker, queue, tuple(notes))
