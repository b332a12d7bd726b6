"""``matchmaker.client``: submit tasks to a matchmaker scheduler and follow them, over
RabbitMQ only (light: pika and orjson; never the engine, OR-Tools or numpy).

    from matchmaker.client import Client

    with Client("amqp://mm-client@mq:5672/matchmaker", password_file="mm-client.password") as c:
        handle = c.submit("sleep", {"seconds": 1}, priority=5)
        output = handle.wait(timeout=60)   # or raises TaskDead, TaskCancelled, ...

``AsyncClient`` is the same for asyncio. docs/client.md has the whole story.
"""

from __future__ import annotations

from matchmaker.client.aio import AsyncClient, AsyncTaskHandle
from matchmaker.client.core import Client
from matchmaker.client.errors import (
    ClientClosed,
    ClientError,
    TaskCancelled,
    TaskDead,
    TaskError,
    TaskFailed,
    TaskNotDone,
    TaskRejected,
    TaskUnknown,
)
from matchmaker.client.handle import TaskHandle

__all__ = [
    "AsyncClient",
    "AsyncTaskHandle",
    "Client",
    "ClientClosed",
    "ClientError",
    "TaskCancelled",
    "TaskDead",
    "TaskError",
    "TaskFailed",
    "TaskHandle",
    "TaskNotDone",
    "TaskRejected",
    "TaskUnknown",
]
