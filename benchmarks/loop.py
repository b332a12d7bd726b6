"""``python -m benchmarks.loop``: the scheduler loop's own time from a request's arrival to
its dispatch being sent, in process, without a broker.

The real ``Scheduler`` (its SQLite ledger, its commits, ``plan()``) runs on
the in-memory transport (``matchmaker.scheduler.memory``) in real time: requests
arrive paced at ``--rate`` per second, each dispatched task succeeds
``--run`` seconds later (its result arrives then), so slots free up as they
would. Arrival = when the request is put on the queue (the loop's poll returns at
once); sent = the next poll after the round that dispatched it (where the RabbitMQ
transport writes the frames to the socket). What it leaves out is the broker and
the network: this is the scheduler's share of the submit -> worker latency.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matchmaker.config import Config
from matchmaker.ledger import Letter
from matchmaker.messages import TaskRequest, TaskResult, encode, encode_batch
from matchmaker.models import Worker
from matchmaker.scheduler.clock import BATCH, TurnClock
from matchmaker.scheduler.memory import FakeClock, MemoryBroker, MemoryTransport
from matchmaker.scheduler.transport import Polled
from matchmaker.service import Scheduler
from matchmaker.wire.broker import REQUESTS, RESULTS
from membership.inventory import LiveWorker
from membership.tags import Advertised


def advertised(worker: Worker) -> Advertised:
    """What ``worker`` would advertise (the inventory's type)."""
    return Advertised(
        worker.name, worker.capabilities, worker.slots, worker.attributes, worker.perf
    )


class Members:
    def __init__(self, workers: list[Worker]) -> None:
        self.live = {w.name: LiveWorker(advertised(w), f"mm.worker.{w.name}") for w in workers}

    def snapshot(self) -> Mapping[str, LiveWorker]:
        return self.live


class Paced:
    """A ``Transport``: the in-memory one, fed in real time, timing each task."""

    def __init__(self, broker: MemoryBroker, rate: float, count: int, run: float) -> None:
        self.broker = broker
        self.inner: MemoryTransport = broker(lambda: False)
        self.interval = 1.0 / rate
        self.count = count
        self.run = run
        self.start = time.monotonic() + 0.2
        self.sent = 0
        self.arrived: dict[str, float] = {}
        self.dispatched: dict[str, float] = {}
        self.flushed: dict[str, float] = {}
        self.unflushed: list[str] = []
        self.results: list[tuple[float, str, str]] = []  # (due, task id, worker)

    def _next_event(self) -> float:
        arrival = self.start + self.sent * self.interval if self.sent < self.count else np.inf
        result = min((due for due, _, _ in self.results), default=np.inf)
        return float(min(arrival, result))

    def _inject(self, now: float) -> bool:
        put = False
        while self.sent < self.count and self.start + self.sent * self.interval <= now:
            task_id = f"t{self.sent:07d}"
            self.broker.send(REQUESTS, encode(TaskRequest(task_id, "sleep")), "client")
            self.arrived[task_id] = time.monotonic()
            self.sent += 1
            put = True
        due = [r for r in self.results if r[0] <= now]
        if due:
            self.results = [r for r in self.results if r[0] > now]
            by_worker: dict[str, list[bytes]] = {}
            for _, task_id, worker in due:  # a worker reports what finished together at once
                result = TaskResult(task_id, 1, worker, "succeeded", now - self.run, now)
                by_worker.setdefault(worker, []).append(encode(result))
            for worker, bodies in by_worker.items():
                self.broker.send(RESULTS, encode_batch("results", bodies), f"mm-worker-{worker}")
            put = True
        return put

    def poll(self, timeout: float) -> Polled:
        now = time.monotonic()
        for task_id in self.unflushed:
            self.flushed[task_id] = now
        self.unflushed = []
        if not self._inject(now):
            until = min(now + timeout, self._next_event())
            if until > now:
                time.sleep(until - now)
            self._inject(time.monotonic())
        return self.inner.poll(0.0)

    def dispatch(self, worker: str, task_ids: Sequence[str], bodies: Sequence[bytes]) -> None:
        now = time.monotonic()
        self.inner.dispatch(worker, task_ids, bodies)
        for task_id in task_ids:
            self.dispatched[task_id] = now
            self.unflushed.append(task_id)
            self.results.append((now + self.run, task_id, worker))

    def letter(self, letter: Letter) -> None:
        self.inner.letter(letter)

    def event(self, routing_key: str, body: bytes) -> None:
        self.inner.event(routing_key, body)

    def notice(self, owner: str, body: bytes) -> None:
        self.inner.notice(owner, body)

    def cancel(self, worker: str, task_id: str) -> None:
        self.inner.cancel(worker, task_id)

    def ack(self, source: str, tag: int) -> None:
        self.inner.ack(source, tag)

    def declare_worker(self, worker: str) -> None:
        self.inner.declare_worker(worker)

    def purge(self, worker: str) -> int:
        return self.inner.purge(worker)

    def close(self) -> None:
        self.inner.close()

    def done(self) -> bool:
        return self.sent >= self.count and len(self.flushed) >= self.count


def measure(
    rate: float, count: int, run: float, workers: int, slots: int, batch: float = BATCH
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as state:
        broker = MemoryBroker(FakeClock())
        paced: Paced | None = None

        def connect(stopping: Callable[[], bool]) -> Paced:
            nonlocal paced
            paced = Paced(broker, rate, count, run)
            return paced

        scheduler = Scheduler(
            Config(state_dir=Path(state), authenticated_senders=False), connector=connect
        )
        scheduler.turns = TurnClock(scheduler.config.round_interval, batch=batch)
        scheduler.inventory = Members([Worker(f"w{n}", ["sleep"], slots) for n in range(workers)])
        scheduler.lead(connect(lambda: False))
        assert paced is not None
        turns = 0
        try:
            deadline = time.monotonic() + count / rate + 60.0
            while not paced.done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(paced.flushed)} of {count} tasks dispatched in time")
                scheduler.step()
                turns += 1
        finally:
            scheduler.drop()
            scheduler.ledger.close()
        ids = sorted(paced.flushed)
        sent = np.array([paced.flushed[i] - paced.arrived[i] for i in ids])
        placed = np.array([paced.dispatched[i] - paced.arrived[i] for i in ids])

    def ms(a: np.ndarray) -> dict[str, float]:
        return {q: float(np.percentile(a, p) * 1e3) for q, p in (("p50", 50), ("p99", 99))} | {
            "max": float(a.max() * 1e3)
        }

    return {
        "rate": rate,
        "batch": batch,
        "tasks": count,
        "steps": turns,
        "to_sent": ms(sent),
        "to_round": ms(placed),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loop", description=__doc__)
    p.add_argument("--rate", type=float, action="append", help="tasks/s (repeatable; 50, 2000)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--run", type=float, default=0.01, help="each task's run time in seconds")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=1024)
    p.add_argument(
        "--batch",
        type=float,
        default=BATCH,
        help="full batch window / turn cost (default %(default)s; the service's batch_window)",
    )
    p.add_argument("--out", type=Path, default=Path("results/loop.json"))
    args = p.parse_args(argv)
    reports = []
    for rate in args.rate or [50.0, 2000.0]:
        count = max(1, round(rate * args.seconds))
        r = measure(rate, count, args.run, args.workers, args.slots, args.batch)
        reports.append(r)
        print(
            f"{rate:7,.0f}/s, batch {args.batch:g}, {r['tasks']:,} tasks, {r['steps']:,} steps: "
            "arrival -> dispatch "
            f"sent p50 {r['to_sent']['p50']:.2f} p99 {r['to_sent']['p99']:.2f} "
            f"max {r['to_sent']['max']:.2f} ms (round done: p50 {r['to_round']['p50']:.2f} ms)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
