"""The Celery side of ``live e2e``: one no-op task, counted without a result backend.

Settings match what the comparison asks for: ``acks_late`` (ack after the
run, like matchmaker's workers), prefetch multiplier 1, results ignored.
Each run of ``noop`` appends one byte to the file named by
``MM_CELERY_COUNTER`` (opened ``O_APPEND``, so concurrent pool processes
never lose a byte): the benchmark counts completions by the file size.
``MM_CELERY_READY`` names a file touched when the worker is ready.
``python -m benchmarks.celery_app N`` publishes N tasks through one producer
and prints the time of the first publish (a fresh process, so no cached
connection or queue declaration of an earlier run leaks in).

Environment: ``MM_CELERY_BROKER`` (AMQP URL), ``MM_CELERY_QUEUE_TYPE``
(``classic`` or ``quorum``, default ``classic`` like matchmaker's queues).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready

QUEUE = "mm.bench.celery"

app = Celery("mm_bench", broker=os.environ.get("MM_CELERY_BROKER", "amqp://"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=QUEUE,
    task_default_queue_type=os.environ.get("MM_CELERY_QUEUE_TYPE", "classic"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop() -> None:
    fd = os.open(os.environ["MM_CELERY_COUNTER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)


@worker_ready.connect
def _ready(**_: Any) -> None:
    ready = os.environ.get("MM_CELERY_READY")
    if ready:
        Path(ready).touch()


def publish(count: int) -> float:
    """Send ``count`` no-op tasks; returns the time of the first send."""
    with app.producer_or_acquire() as producer:
        first = time.time()
        for _ in range(count):
            noop.apply_async(producer=producer)
    return first


if __name__ == "__main__":
    print(repr(publish(int(sys.argv[1]))))
