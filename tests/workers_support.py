"""Helpers for the worker tests: worker subprocesses, a broker client, Serf agents."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from matchmaker.messages import TaskDispatch, TaskResult, decode_results, encode, encode_batch
from matchmaker.wire import amqp
from matchmaker.wire.broker import DEAD, PERSISTENT, RESULTS, declare_core, worker_queue
from membership.agent import SerfAgent

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


class AckRecorder:
    """Stands for a worker's consuming channel in unit tests: records acks and nacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.is_open = True

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", tag, multiple))

    def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.calls.append(("nack", tag, requeue))


class WorkerProcess:
    """``python -m workers ...`` as a real subprocess, its log in a file."""

    def __init__(self, args: list[str], broker_url: str, log: Path) -> None:
        self.log = log
        env = {**os.environ, "MM_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> WorkerProcess:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n{self.text()}")
            return "consuming mode=" in self.text()

        wait_for(ready, timeout, "the worker to start consuming")
        return self

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def spawn(broker_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses (``spawn("--name", "w1", ...)``); all killed at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str, ready: bool = True, insecure: bool = True) -> WorkerProcess:
        argv = [*args] if "--sandbox" in args else [*args, "--sandbox", str(tmp_path / "sandbox")]
        if insecure and "--serf-auth-file" not in args:
            argv.append("--insecure")
        worker = WorkerProcess(argv, broker_url, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.kill()


class Client:
    """The test's side of the broker: publish dispatches, read results and dead letters."""

    def __init__(self, url: str) -> None:
        self.connection = amqp.plain(url)
        self.channel = self.connection.channel()
        declare_core(self.channel)
        self.results: list[TaskResult] = []

    def publish(self, queue: str, body: bytes) -> None:
        self.channel.basic_publish("", queue, body, PERSISTENT)

    def dispatch(
        self, worker: str, task_id: str, payload: dict[str, Any], *, type: str = "sleep", **kw: Any
    ) -> None:
        deadline = kw.pop("deadline", time.time() + 60)
        attempt = kw.pop("attempt", 1)
        message = TaskDispatch(task_id, attempt, type, payload, deadline)
        self.publish(worker_queue(worker), encode(message))

    def dispatch_batch(self, worker: str, items: list[bytes]) -> None:
        """One ``dispatches`` message of these encoded dispatches (or bad items)."""
        self.publish(worker_queue(worker), encode_batch("dispatches", items))

    def _drain_results(self) -> None:
        while True:
            method, _props, body = self.channel.basic_get(RESULTS, auto_ack=True)
            if method is None:
                return
            batch = decode_results(body)
            assert not batch.invalid, batch.invalid
            self.results.extend(batch.items)

    def of(self, task_id: str) -> list[TaskResult]:
        return [r for r in self.results if r.id == task_id]

    def final(self, task_id: str, timeout: float = 15.0) -> TaskResult:
        """Wait for the task's final result (succeeded or failed)."""

        def done() -> TaskResult | None:
            self._drain_results()
            finals = [r for r in self.of(task_id) if r.state != "running"]
            return finals[-1] if finals else None

        return wait_for(done, timeout, f"the final result of {task_id}")

    def running(self, task_id: str, timeout: float = 15.0) -> TaskResult:
        def started() -> TaskResult | None:
            self._drain_results()
            return next((r for r in self.of(task_id) if r.state == "running"), None)

        return wait_for(started, timeout, f"{task_id} to be running")

    def dead(self, timeout: float = 15.0) -> tuple[dict[str, Any], bytes]:
        def get() -> tuple[dict[str, Any], bytes] | None:
            method, props, body = self.channel.basic_get(DEAD, auto_ack=True)
            return (dict(props.headers or {}), body) if method else None

        return wait_for(get, timeout, "a message on mm.dead")

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def close(self) -> None:
        with contextlib.suppress(amqp.AMQPError):
            if self.connection.is_open:
                self.connection.close()


@pytest.fixture
def client(broker_url: str) -> Iterator[Client]:
    c = Client(broker_url)
    yield c
    c.close()


class Observer:
    """Another member of the gossip pool (a real agent), asked about members with the CLI."""

    def __init__(
        self, name: str, workdir: Path, encrypt_key: str | None = None, rpc_auth: str | None = None
    ) -> None:
        self.agent = SerfAgent(
            name,
            encrypt_key=encrypt_key,
            rpc_auth=rpc_auth,
            workdir=workdir,
            log_level="warn",
            insecure=not (encrypt_key and rpc_auth),
        )
        self.agent.start()
        self.bind, self.rpc = self.agent.bind_addr, self.agent.rpc_addr

    def members(self) -> dict[str, dict[str, Any]]:
        auth = [f"-rpc-auth={self.agent.rpc_auth}"] if self.agent.rpc_auth else []
        done = subprocess.run(
            ["serf", "members", f"-rpc-addr={self.rpc}", *auth, "-format=json"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return {m["name"]: m for m in json.loads(done.stdout)["members"]}

    def stop(self) -> None:
        self.agent.kill()


@pytest.fixture
def observer(tmp_path: Path) -> Iterator[Observer]:
    agent = Observer("observer", tmp_path / "observer")
    yield agent
    agent.stop()
