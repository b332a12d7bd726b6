"""The writes the API publishes to ``mm.requests``: the existing ``submit``, ``cancel`` and
``drain`` messages, and two the loop learns from here:

- ``retry`` ``{"v": 1, "kind": "retry", "id": ...}``: a dead task runs again as a new
  attempt (the loop reopens it pending with attempt + 1 and a fresh attempt budget);
- ``drain`` with an optional ``deadline`` (Unix seconds): by then, the drained worker's
  tasks still in flight go back to pending. A loop that does not know the field ignores
  it (the drain itself still applies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from matchmaker.messages import NAME, VERSION, MessageError


@dataclass
class Retry:
    id: str
    kind: str = "retry"


def encode_retry(task_id: str) -> bytes:
    return orjson.dumps({"v": VERSION, "kind": "retry", "id": task_id})


def decode_retry(body: dict[str, Any]) -> Retry:
    """A ``retry`` message's body (already parsed JSON, version checked) as a ``Retry``."""
    task_id = body.get("id")
    if not isinstance(task_id, str) or not NAME.fullmatch(task_id):
        raise MessageError("'id' must be 1-128 characters of letters, digits and _ . : @ -")
    return Retry(task_id)


def encode_drain(worker: str, on: bool = True, deadline: float | None = None) -> bytes:
    body: dict[str, Any] = {"v": VERSION, "kind": "drain", "worker": worker, "on": on}
    if deadline is not None:
        if not math.isfinite(deadline):
            raise MessageError("'deadline' must be a finite time")
        body["deadline"] = deadline
    return orjson.dumps(body)
