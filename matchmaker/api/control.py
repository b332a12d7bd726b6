"""The writes the API publishes to ``mm.requests``: ``submit``, ``cancel``, ``retry`` (a dead
or cancelled task runs again as one more attempt) and ``drain``, the messages of
``matchmaker.messages``."""

from __future__ import annotations

from matchmaker.messages import Drain, Retry, encode


def encode_retry(task_id: str) -> bytes:
    return encode(Retry(task_id))


def encode_drain(worker: str, on: bool = True, deadline: float | None = None) -> bytes:
    return encode(Drain(worker, on, None if deadline is None else float(deadline)))
