"""``sleep``: wait ``seconds`` (0 = a no-op), for tests and benchmarks.

Payload: ``{"seconds": float >= 0, "fail": bool}``; ``fail`` makes it raise.
"""

from __future__ import annotations

from typing import Any

from workers.registry import task
from workers.tasks.base import TaskContext, TaskError


@task("sleep")
def run(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    seconds = payload.get("seconds", 0)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= 86400
    ):
        raise TaskError("sleep: 'seconds' must be a number from 0 to 86400")
    if seconds and context.cancelled.wait(seconds):
        raise TaskError("sleep: cancelled")
    if payload.get("fail"):
        raise TaskError(str(payload.get("message", "sleep: failed on request")))
    return {"slept": seconds}
