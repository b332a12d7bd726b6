"""Pull mode (the original design, kept for comparison): admit a TaskRequest, or hand it back.

A pull worker competes for messages on ``mm.pull.<type>`` queues and sees only
what arrives. It can check a request's constraints against its own attributes
(``matchmaker.models``, the same rules the engine uses) but can do nothing
better with one it cannot meet than hand it back to the queue and hope
another worker takes it. The accepted request becomes a one-attempt dispatch
whose deadline is its timeout from now.

A refused request is handed back (``HandBack``): after about ``requeue_delay``
(so a lone unsuitable worker does not spin on it) it is published again to the
end of its queue under confirms, like a dead letter (``workers.reports``), and
its delivery is acked once the broker has it. The delay is drawn from
``JITTER`` times it: with a fixed one, two refused requests going round
together fall into step with the broker's round robin over the consumers, and
each can meet only the same half of them for ever, never the one worker that
could run it. A ``basic_nack(requeue=True)`` would put it back at the head of
a classic queue, where every worker that cannot run it takes it again before
anything behind it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from matchmaker.messages import TaskDispatch, TaskRequest
from matchmaker.models import Task, Worker, worker_value
from workers.reports import Letter, Reporter
from workers.stats import Stats

log = logging.getLogger("workers.runtime")  # the worker's one log, as operators filter it

JITTER = (0.5, 1.5)  # a hand-back waits requeue_delay times a uniform draw from this
REMEMBER_REQUEUES = 10_000  # tasks whose hand-backs are counted (for the log) before forgetting

# Runs a callback on the connection's thread after a delay; False without a connection.
Later = Callable[[float, Callable[[], None]], bool]


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


class HandBack:
    """Pull mode's refusal path: requests this worker cannot run go back to their queue."""

    def __init__(self, stats: Stats, reports: Reporter, delay: float, later: Later) -> None:
        self.stats = stats
        self.reports = reports
        self.delay = delay
        self.later = later

    def __call__(self, request: TaskRequest, reason: str, letter: Letter) -> None:
        """Count and log the refusal, then give ``letter`` (``requeue``) to the reporter."""
        stats = self.stats
        stats.requeued += 1
        count = stats.requeues_by_task.get(request.id, 0) + 1
        if len(stats.requeues_by_task) > REMEMBER_REQUEUES:
            stats.requeues_by_task.clear()
        stats.requeues_by_task[request.id] = count
        if count == 1 or count % 100 == 0:
            log.info(
                "task requeued id=%s reason=%r times=%d total_requeues=%d",
                request.id,
                reason,
                count,
                stats.requeued,
            )
        # Hand it back after a short pause, so a lone unsuitable worker does not spin on it.
        pause = self.delay * random.uniform(*JITTER)
        if pause > 0 and self.later(pause, lambda: self.reports.add(letter)):
            return
        self.reports.add(letter)
