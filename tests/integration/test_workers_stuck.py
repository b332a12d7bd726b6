"""A task that will not stop: its result says abandoned, its slot is withheld until it ends."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from matchmaker.messages import TaskDispatch
from membership.agent import free_port
from membership.rpc import SerfRPC
from tests.workers_support import (  # noqa: F401
    Client,
    Observer,
    client,
    observer,
    wait_for,
)
from workers.config import SerfConfig, WorkerConfig
from workers.presence import make_presence
from workers.runner import Job, Runner
from workers.runtime import Worker
from workers.tasks.base import TaskContext


class Stubborn:
    """A task function that ignores its cancel flag until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []

    def __call__(self, payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
        self.started.append(context.task_id)
        if payload.get("stuck"):
            self.release.wait(60)
        return {"ok": True}


def job(task_id: str, payload: dict[str, Any]) -> Job:
    deadline = time.time() + 60
    dispatch = TaskDispatch(task_id, 1, "t", payload, deadline)
    return Job(dispatch, TaskContext(task_id, 1, "w1", Path("/nonexistent"), deadline), [])


@pytest.fixture
def stubborn() -> Iterator[Stubborn]:
    task = Stubborn()
    yield task
    task.release.set()


def test_a_task_that_will_not_stop_has_its_slot_withheld_until_it_ends(
    stubborn: Stubborn,
) -> None:
    woken = threading.Event()
    runner = Runner("w1", 2, {"t": stubborn}, wake=woken.set, stop_grace=0.3)
    try:
        runner.start(stuck := job("stuck", {"stuck": True}))
        wait_for(lambda: stubborn.started == ["stuck"], what="the stubborn task to start")
        assert runner.cancel("stuck") == 1
        runner.expire()  # sees the cancel; the task has stop_grace to stop
        assert runner.capacity() == 2 and stuck.final is None
        wait_for(lambda: runner.expire() is not None and runner.capacity() == 1, timeout=5,
                 what="the slot to be withheld")  # fmt: skip
        assert stuck.final is not None and stuck.final.state == "failed"
        assert str(stuck.final.error).startswith("abandoned: the task did not stop within 0.3s")
        # one slot left: two more tasks run one at a time, the second only after the first
        runner.start(job("one", {}))
        wait_for(lambda: "one" in stubborn.started, what="a task on the remaining slot")
        runner.start(held := job("held", {"stuck": True}))
        runner.start(after := job("after", {}))
        wait_for(lambda: "held" in stubborn.started, what="held to start")
        time.sleep(0.3)  # "after" must not start while both threads are busy
        assert "after" not in stubborn.started and after.state == "waiting"
        woken.clear()
        stubborn.release.set()  # the stubborn thread ends at last: its slot is back
        wait_for(lambda: runner.capacity() == 2, what="the slot to come back")
        assert woken.is_set()
        wait_for(lambda: after.final is not None, what="the waiting task to run")
        assert held.final is not None and held.final.state == "succeeded"
    finally:
        stubborn.release.set()
        runner.shutdown()


@pytest.mark.broker
@pytest.mark.serf
def test_the_withheld_slot_is_advertised_through_serf(
    broker_url: str,
    tmp_path: Path,
    stubborn: Stubborn,
    client: Client,  # noqa: F811
    observer: Observer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="workers")
    rpc = f"127.0.0.1:{free_port()}"
    config = WorkerConfig(
        name="ws",
        capabilities=("sleep",),
        slots=3,
        broker_url=broker_url,
        serf=SerfConfig(rpc_bind=rpc, join=(observer.bind,), insecure=True),
        sandbox=tmp_path / "sandbox",
        grace=1.0,
    )
    worker = Worker(config, registry={"sleep": stubborn}, presence=make_presence(config))
    worker.runner.stop_grace = 0.5
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(worker.run()))
    thread.start()
    try:
        slots = lambda: observer.members().get("ws", {}).get("tags", {}).get("slots")  # noqa: E731
        wait_for(lambda: slots() == "3", what="ws to advertise 3 slots")
        wait_for(lambda: "consuming mode=push" in caplog.text, what="ws to consume its queue")
        client.dispatch("ws", "stuck", {"stuck": True}, deadline=time.time() + 1.0)
        final = client.final("stuck", timeout=10)
        assert final.state == "failed" and "timed out" in str(final.error)
        wait_for(lambda: slots() == "2", timeout=15, what="the slot tag to drop to 2")
        with SerfRPC(rpc) as own:
            assert next(m.tags for m in own.members() if m.name == "ws")["slots"] == "2"
        client.dispatch("ws", "fine", {})  # the other slots still work
        assert client.final("fine").state == "succeeded"
        stubborn.release.set()
        wait_for(lambda: slots() == "3", timeout=15, what="the slot tag to come back to 3")
        assert "after it was cancelled; abandoned, its slot withheld" in caplog.text
        assert "advertised slots=2 of 3 (1 withheld" in caplog.text
    finally:
        stubborn.release.set()
        worker.stop()
        worker.stop()
        thread.join(30)
    assert not thread.is_alive() and status == [0]
