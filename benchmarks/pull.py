"""Pull mode in the simulation: RabbitMQ competing consumers, one queue per task type.

Model (how RabbitMQ delivers, as documented for basic.qos / basic.consume):

- Costs: ``latency`` is one network hop (client, worker -> broker or back);
  the broker spends ``broker`` on each message it takes in (the same
  per-message cost push pays on each of its messages; queueing inside the
  broker is not modelled: at these rates it is a few percent busy).
- Publishing: a task is published to the queue of its type and is ready
  there ``latency + broker`` after it arrives. With ``priority_queues`` the queue is
  declared with ``x-max-priority`` = 10 and delivers the highest priority
  first (FIFO within a priority); otherwise it is plain FIFO.
- Consuming: each worker consumes every queue of its capabilities on one
  channel with a prefetch limit of ``prefetch`` unacknowledged messages
  (default: its slots). A queue hands its head message to the next consumer
  with spare prefetch in round-robin order; a worker with spare prefetch
  visits its queues in rotating order. A delivery takes ``latency``.
- Acknowledging: a worker acks when a task ends; the ack takes ``latency``
  to reach the broker, which only then counts the prefetch slot free. A
  worker that got more messages than it has slots (prefetch > slots) keeps
  them in a local buffer.
- Constraints: the broker knows only the type. A worker that receives a
  task whose constraints (site, gpu) it does not meet rejects it with
  ``basic.reject(requeue=true)``: the message goes back to its place near the
  head of the queue ``latency + broker`` later and is delivered again, possibly to
  another unsuitable worker. Each such reject counts as one requeue. The
  ``naive`` variant runs the task anyway and counts a constraint violation.
- Preferences are invisible to the broker: a locality hit happens by chance.
- Failure: a crashed worker's connection closes; ``latency`` later (plus
  ``detection``, 0 for a process crash that closes its socket; a heartbeat
  timeout for a cut-off host) the broker requeues all its unacked messages,
  running or buffered, which may run a second time elsewhere if the worker
  had finished them but its ack was lost (counted as duplicates).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass

from benchmarks.progress import Progress
from benchmarks.record import RunRecord, check_placement
from benchmarks.scenarios import Scenario
from matchmaker import Worker

PUBLISH, DELIVER, COMPLETE, ACK, REJECT, FAIL, CLOSE = range(7)


@dataclass(frozen=True)
class PullParams:
    latency: float = 0.0003
    broker: float = 0.0001
    prefetch: int | None = None  # None: each worker's slots
    priority_queues: bool = True
    naive: bool = False
    detection: float = 0.0


def simulate_pull(
    scenario: Scenario, params: PullParams, progress: Progress | None = None
) -> RunRecord:
    wall = time.perf_counter()
    load = scenario.workload
    tasks, arrival, duration = load.tasks, load.arrival, load.duration
    sims = scenario.workers
    n = len(sims)
    mode = "pull-naive" if params.naive else "pull" if params.priority_queues else "pull-fifo"
    record = RunRecord(mode, len(tasks))
    base = [Worker(w.name, w.capabilities, w.slots, 0, w.attributes) for w in sims]
    checks: dict[tuple[str, int], tuple[bool, bool]] = {}

    type_names = sorted({t.type for t in tasks} | {c for w in sims for c in w.capabilities})
    qid = {name: q for q, name in enumerate(type_names)}
    task_queue = [qid[t.type] for t in tasks]
    queues: list[list[tuple[int, int, int]]] = [[] for _ in type_names]  # (-prio, seq, task)
    rings: list[deque[int]] = [deque() for _ in type_names]
    in_ring: list[set[int]] = [set() for _ in type_names]
    consumes = [sorted(qid[c] for c in w.capabilities) for w in sims]
    rotate = [0] * n
    credit = [params.prefetch or w.slots for w in sims]
    unacked: list[set[int]] = [set() for _ in range(n)]
    running = [0] * n
    buffer: list[deque[int]] = [deque() for _ in range(n)]
    running_on: list[set[int]] = [set() for _ in range(n)]
    dead = [False] * n
    closed = [False] * n
    msg_seq = [0] * len(tasks)

    events: list[tuple[float, int, int, int, int, float]] = []
    seq = 0

    def push(t: float, kind: int, a: int = 0, b: int = 0, c: float = 0.0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, a, b, c))

    for i in range(len(tasks)):
        msg_seq[i] = i
        push(float(arrival[i]) + params.latency + params.broker, PUBLISH, i)
    for k, w in enumerate(sims):
        record.capacity(0.0, w.slots)
        if w.fails_at is not None:
            push(w.fails_at, FAIL, k)
        for q in consumes[k]:
            rings[q].append(k)
            in_ring[q].add(k)

    def enqueue(i: int) -> None:
        key = -tasks[i].priority if params.priority_queues else 0
        heapq.heappush(queues[task_queue[i]], (key, msg_seq[i], i))

    def dispatch(q: int, t: float) -> None:
        heap, ring, members = queues[q], rings[q], in_ring[q]
        while heap and ring:
            k = ring.popleft()
            if closed[k] or credit[k] == 0:
                members.discard(k)
                continue
            _, _, i = heapq.heappop(heap)
            credit[k] -= 1
            unacked[k].add(i)
            push(t + params.latency, DELIVER, i, k)
            if credit[k] > 0:
                ring.append(k)
            else:
                members.discard(k)

    def available(k: int, t: float) -> None:
        """Worker k has spare prefetch again: back into its queues' rings, then deliver."""
        qs = consumes[k]
        for q in qs:
            if k not in in_ring[q]:
                rings[q].append(k)
                in_ring[q].add(k)
        start = rotate[k] = (rotate[k] + 1) % len(qs)
        for q in qs[start:] + qs[:start]:
            if credit[k] == 0:
                break
            dispatch(q, t)

    def start(i: int, k: int, t: float) -> None:
        running[k] += 1
        running_on[k].add(i)
        record.busy(t, 1)
        push(t + float(duration[i]) / sims[k].speed, COMPLETE, i, k, t)

    while events:
        t, _, kind, a, b, c = heapq.heappop(events)
        if kind == PUBLISH:
            enqueue(a)
            dispatch(task_queue[a], t)
        elif kind == DELIVER:
            if dead[b]:
                continue  # requeued when the connection closes
            key = (tasks[a].class_key, b)
            check = checks.get(key)
            if check is None:
                check = checks[key] = check_placement(tasks[a], base[b])
            if check[1] and not params.naive:
                record.requeues += 1
                push(t + params.latency + params.broker, REJECT, a, b)
            elif running[b] < sims[b].slots:
                start(a, b, t)
            else:
                buffer[b].append(a)
        elif kind == COMPLETE:
            if dead[b]:
                continue
            running[b] -= 1
            running_on[b].discard(a)
            record.busy(t, -1)
            local, violation = checks[(tasks[a].class_key, b)]
            record.complete(a, c, t, b, local, violation)
            push(t + params.latency, ACK, a, b)
            if buffer[b]:
                start(buffer[b].popleft(), b, t)
        elif kind in (ACK, REJECT):
            if closed[b]:
                continue  # the close already requeued it
            unacked[b].discard(a)
            credit[b] += 1
            if kind == REJECT:
                enqueue(a)
            available(b, t)
        elif kind == FAIL:
            dead[a] = True
            record.busy(t, -len(running_on[a]))
            record.lost_runs += len(running_on[a])
            record.capacity(t, -sims[a].slots)
            running_on[a].clear()
            push(t + params.latency + params.detection, CLOSE, a)
        elif kind == CLOSE:
            closed[a] = True
            credit[a] = 0
            for i in sorted(unacked[a]):
                enqueue(i)
            unacked[a].clear()
            for q in range(len(queues)):
                dispatch(q, t)
        if progress and kind == ACK and record.completions % 1000 == 0:
            progress.update(record.completions)
    record.wall_seconds = time.perf_counter() - wall
    return record
