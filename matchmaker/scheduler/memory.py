"""A broker in memory behind the scheduler's ``Transport``, and a clock it drives, for unit
tests of the whole loop without RabbitMQ.

``MemoryBroker`` holds the two queues the scheduler consumes (messages sent
to them now or at a given time of the ``FakeClock``), what the scheduler
published (dispatches per worker, letters, events, cancels), and who leads.
Calling it (a ``Connector``) makes this scheduler the leader, or raises
``TransportLost`` while the broker is ``down``. Its transport delivers what
is due at each ``poll`` with tags numbered per connection; a ``poll`` with
nothing due moves the clock to the next arrival or by the whole timeout, so a
test runs the loop's timing exactly, in no real time. Publisher confirms
come with the next poll: acks, or nacks for what was published while
``refuse`` was set. ``lose()``
drops the connection as a dead socket would: the next call raises
``TransportLost`` and every unacked delivery goes back to its queue, first.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from matchmaker.ledger import Letter
from matchmaker.scheduler.transport import Delivery, Polled, TransportLost
from matchmaker.wire.broker import REQUESTS, RESULTS


@dataclass
class FakeClock:
    """Wall and monotonic time that move only when told (``advance``, a poll, a pause)."""

    now: float = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def pause(self, seconds: float, stopping: Callable[[], bool]) -> bool:
        self.advance(seconds)
        return stopping()


Message = tuple[bytes, str | None]  # body, sender


@dataclass
class MemoryBroker:
    clock: FakeClock = field(default_factory=FakeClock)
    down: bool = False  # connecting fails (the broker is unreachable)
    refuse: bool = False  # dispatches and letters are nacked
    confirm: bool = True  # confirms are answered at all
    queues: dict[str, deque[Message]] = field(
        default_factory=lambda: {REQUESTS: deque(), RESULTS: deque()}
    )
    dispatches: dict[str, list[tuple[list[str], list[bytes]]]] = field(default_factory=dict)
    letters: list[Letter] = field(default_factory=list)
    events: list[tuple[str, bytes]] = field(default_factory=list)
    notices: list[tuple[str, bytes]] = field(default_factory=list)  # (owner, body)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=lambda: {REQUESTS: 0, RESULTS: 0})
    declared: set[str] = field(default_factory=set)
    leader: MemoryTransport | None = None
    connections: int = 0
    later: list[tuple[float, int, str, Message]] = field(default_factory=list)  # heap
    order: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, queue: str, body: bytes, user: str | None, at: float | None = None) -> None:
        """Put a message on ``queue`` now, or at clock time ``at``."""
        if at is None or at <= self.clock.now:
            self.queues[queue].append((body, user))
        else:
            heapq.heappush(self.later, (at, next(self.order), queue, (body, user)))

    def arrive(self) -> float | None:
        """Move what is due to its queue; the time of the next later arrival, if any."""
        while self.later and self.later[0][0] <= self.clock.now:
            _, _, queue, message = heapq.heappop(self.later)
            self.queues[queue].append(message)
        return self.later[0][0] if self.later else None

    def __call__(self, stopping: Callable[[], bool]) -> MemoryTransport:
        if self.down:
            raise TransportLost("the broker is down")
        if self.leader is not None and not self.leader.lost:
            raise TransportLost("another scheduler leads")
        self.connections += 1
        self.leader = MemoryTransport(self)
        return self.leader

    def dispatched(self, worker: str | None = None) -> list[str]:
        """The task ids dispatched (to ``worker``, or to any), in order."""
        return [
            task_id
            for name, messages in self.dispatches.items()
            if worker is None or name == worker
            for ids, _ in messages
            for task_id in ids
        ]


class MemoryTransport:
    """One connection to a ``MemoryBroker`` (``Transport``)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.lost = False
        self.tags = {REQUESTS: 0, RESULTS: 0}
        self.unacked: dict[str, dict[int, Message]] = {REQUESTS: {}, RESULTS: {}}
        self.acked: dict[str, int] = {REQUESTS: 0, RESULTS: 0}
        self.waiting_dispatches: list[tuple[str, str, bool]] = []  # (id, worker, refused)
        self.waiting_letters: list[tuple[str, bool]] = []  # (key, refused)
        self.polls = 0

    def _alive(self) -> None:
        if self.lost:
            raise TransportLost("connection lost")

    def lose(self) -> None:
        """The connection dies: unacked deliveries go back to the front of their queues."""
        if self.lost:
            return
        self.lost = True
        for queue, unacked in self.unacked.items():
            for tag in sorted(unacked, reverse=True):
                self.broker.queues[queue].appendleft(unacked[tag])
            unacked.clear()
        if self.broker.leader is self:
            self.broker.leader = None

    def _deliver(self, polled: Polled) -> None:
        for queue, into in ((REQUESTS, polled.requests), (RESULTS, polled.results)):
            messages = self.broker.queues[queue]
            while messages:
                body, user = messages.popleft()
                self.tags[queue] += 1
                self.unacked[queue][self.tags[queue]] = (body, user)
                into.append(Delivery(self.tags[queue], body, user))

    def poll(self, timeout: float) -> Polled:
        self._alive()
        self.polls += 1
        clock = self.broker.clock
        polled = Polled()
        if self.broker.confirm:
            now = clock.time()
            for i, w, refused in self.waiting_dispatches:
                if refused:
                    polled.undispatched.append((i, w))
                else:
                    polled.dispatched.append((i, w, now))
            for key, refused in self.waiting_letters:
                (polled.letters_refused if refused else polled.letters_sent).append(key)
            self.waiting_dispatches, self.waiting_letters = [], []
        next_arrival = self.broker.arrive()
        self._deliver(polled)
        if not polled.requests and not polled.results:
            deadline = clock.now + max(0.0, timeout)
            if next_arrival is not None and next_arrival <= deadline:
                clock.now = next_arrival
                self.broker.arrive()
                self._deliver(polled)
            else:
                clock.now = deadline
        return polled

    def dispatch(self, worker: str, task_ids: Sequence[str], bodies: Sequence[bytes]) -> None:
        self._alive()
        if worker not in self.broker.declared:
            raise AssertionError(f"dispatch to {worker} before its queue was declared")
        self.broker.dispatches.setdefault(worker, []).append((list(task_ids), list(bodies)))
        self.waiting_dispatches.extend((i, worker, self.broker.refuse) for i in task_ids)

    def letter(self, letter: Letter) -> None:
        self._alive()
        self.broker.letters.append(letter)
        self.waiting_letters.append((letter.key, self.broker.refuse))

    def event(self, routing_key: str, body: bytes) -> None:
        self._alive()
        self.broker.events.append((routing_key, body))

    def notice(self, owner: str, body: bytes) -> None:
        self._alive()
        self.broker.notices.append((owner, body))

    def cancel(self, worker: str, task_id: str) -> None:
        self._alive()
        self.broker.cancels.append((worker, task_id))

    def ack(self, source: str, tag: int) -> None:
        self._alive()
        if tag <= self.acked[source]:
            raise AssertionError(f"{source}: ack of {tag} after {self.acked[source]}")
        unacked = self.unacked[source]
        for t in [t for t in unacked if t <= tag]:
            del unacked[t]
            self.broker.acked[source] += 1
        self.acked[source] = tag

    def declare_worker(self, worker: str) -> None:
        self._alive()
        self.broker.declared.add(worker)

    def purge(self, worker: str) -> int:
        self._alive()
        self.broker.purged.append(worker)
        return len(self.broker.dispatches.get(worker, []))

    def close(self) -> None:
        self.lose()
