"""Pull mode (the original design, kept for comparison): admit or refuse a TaskRequest.

A pull worker competes for messages on ``mm.pull.<type>`` queues and sees only
what arrives. It can check a request's constraints against its own attributes
(``matchmaker.models``, the same rules the engine uses) but can do nothing
better with one it cannot meet than hand it back to the queue and hope
another worker takes it. The accepted request becomes a one-attempt dispatch
whose deadline is its timeout from now.
"""

from __future__ import annotations

import time

from matchmaker.messages import TaskDispatch, TaskRequest
from matchmaker.models import Task, Worker, worker_value


def refusal(request: TaskRequest, worker: Worker) -> str | None:
    """Why ``worker`` cannot run ``request``, or None if it can."""
    if request.type not in worker.capabilities:
        return f"worker {worker.name} does not run task type {request.type}"
    task = Task(request.id, request.type, constraints=request.constraints)
    unmet = [
        c.describe() for c in task.constraints if not c.allows(worker_value(worker, c.attribute))
    ]
    return f"constraint not met: {', '.join(unmet)}" if unmet else None


def as_dispatch(request: TaskRequest, now: float | None = None) -> TaskDispatch:
    """The request as attempt 1 of a dispatch, due ``timeout`` seconds from now."""
    start = time.time() if now is None else now
    return TaskDispatch(
        id=request.id,
        attempt=1,
        type=request.type,
        payload=request.payload,
        deadline=start + request.timeout,
    )
