"""``AsyncClient``: the client for asyncio programs.

It is a thin wrapper over the thread-backed ``Client``, not a second implementation on
an asyncio AMQP library (aio-pika): the client's behaviour that matters (ordering,
confirms, the inbox and its permissions, resyncing after a reconnect, the retry
barrier) then lives in one place, tested once, and the project keeps one AMQP library
(pika). The cost is the sync client's two threads per client, and a thread-pool hop for
calls that wait on the broker (``submit``, ``cancel``, ``retry``, ``state``). Waiting on
a task blocks no thread: ``await handle.wait()`` is an asyncio future that the client's
callback thread completes with ``loop.call_soon_threadsafe``.

    async with AsyncClient("amqp://mm-client@mq/matchmaker", password_file=...) as client:
        handle = await client.submit("sleep", {"seconds": 1})
        output = await handle.wait(timeout=60)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from matchmaker.client.core import Client
from matchmaker.client.errors import ClientError, TaskError
from matchmaker.client.handle import TaskHandle


class AsyncTaskHandle:
    """A ``TaskHandle`` for asyncio: ``await wait()``, ``await state()``, ``await cancel()``."""

    def __init__(self, handle: TaskHandle) -> None:
        self.handle = handle
        self.id = handle.id

    def __repr__(self) -> str:
        return f"<AsyncTaskHandle {self.id}>"

    def done(self) -> bool:
        return self.handle.done()

    def result(self) -> dict[str, Any]:
        """As ``TaskHandle.result``: never waits."""
        return self.handle.result()

    def exception(self) -> TaskError | None:
        return self.handle.exception()

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The output once the task has succeeded, else its ``TaskError``; TimeoutError
        after ``timeout`` seconds (the task goes on)."""
        if not self.handle.done():
            loop = asyncio.get_running_loop()
            finished: asyncio.Future[None] = loop.create_future()

            def settle(_: TaskHandle) -> None:
                loop.call_soon_threadsafe(_resolve, finished)

            self.handle.add_done_callback(settle)
            self.handle.on_close(lambda: loop.call_soon_threadsafe(_resolve, finished))
            try:
                await asyncio.wait_for(asyncio.shield(finished), timeout)
            except TimeoutError:
                raise TimeoutError(f"task {self.id} is not done after {timeout:g}s") from None
            if not self.handle.done():
                self.handle.check_open()
        return self.handle.result()

    async def state(self, timeout: float = 30.0) -> str:
        return await asyncio.to_thread(self.handle.state, timeout)

    async def cancel(self) -> None:
        await asyncio.to_thread(self.handle.cancel)

    def add_done_callback(self, fn: Any) -> None:
        """``fn(handle)`` (this async handle) on the client's callback thread once done."""
        self.handle.add_done_callback(lambda _: fn(self))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncClient:
    """``Client`` for asyncio (module docstring). ``async with AsyncClient(...)`` or
    ``await AsyncClient(...).open()``; the arguments are ``Client``'s."""

    def __init__(self, broker_url: Any = None, **options: Any) -> None:
        self._args = () if broker_url is None else (broker_url,)
        self._options = options
        self._client: Client | None = None

    async def open(self) -> AsyncClient:
        if self._client is None:
            self._client = await asyncio.to_thread(Client, *self._args, **self._options)
        return self

    @property
    def client(self) -> Client:
        """The sync client underneath (for callers that mix both)."""
        if self._client is None:
            raise ClientError("the AsyncClient is not open: use `async with` or await open()")
        return self._client

    @property
    def user(self) -> str:
        return self.client.user

    async def submit(self, type: str, payload: Mapping[str, Any] | None = None, **options: Any
                     ) -> AsyncTaskHandle:  # fmt: skip
        handle = await asyncio.to_thread(self.client.submit, type, payload, **options)
        return AsyncTaskHandle(handle)

    async def submit_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[AsyncTaskHandle]:
        specs = list(tasks)
        handles = await asyncio.to_thread(self.client.submit_many, specs)
        return [AsyncTaskHandle(h) for h in handles]

    def handle(self, task_id: str) -> AsyncTaskHandle:
        return AsyncTaskHandle(self.client.handle(task_id))

    async def cancel(self, task_id: str) -> None:
        await asyncio.to_thread(self.client.cancel, task_id)

    async def retry(self, task_id: str) -> AsyncTaskHandle:
        return AsyncTaskHandle(await asyncio.to_thread(self.client.retry, task_id))

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    async def __aenter__(self) -> AsyncClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
