"""The scheduler loop's timing: what is due when. Pure: every call is given the time.

The loop does its work in *turns*: a full turn processes what arrived, commits
the ledger once, acks what it committed and, when the backlog or the free
slots changed, runs a *round* (``plan()`` over the whole backlog, and the
dispatches it places). Between full turns, deliveries are processed as they
come (decoded, validated, written uncommitted), at most once per
``INTAKE_SLICE``, so a due turn has little left but its commit and round.

Rounds are event-driven with adaptive batching:

- a full turn is due as soon as something waits for one (a delivery not yet
  committed, or a round wanted: new pending work or a freed slot) and the
  *batch window* since the last full turn has passed;
- the batch window follows the load, measured as the deliveries ``n`` the
  last full turn carried: it is ``BATCH * (n - 1) / (n - 1 + RAMP)`` times
  what that turn cost, capped at ``round_interval``. A turn that carried one
  delivery (or none) means work does not arrive faster than turns complete:
  no window, so a task that arrives is placed at once. As work outpaces the
  turns, each carries more, costs more, and the window grows with both,
  towards ``BATCH`` times the cost; the loop then spends at most about
  ``1 / (1 + BATCH)`` of its time in full turns and the rest on intake, and
  under a flood it batches as a fixed round interval would. The factor rises
  smoothly with ``n``, so a small change of load never switches the loop from
  turning back to back to batching;
- rounds keep a window of their own the same way (a turn whose round is
  not yet due only commits and acks);
- an intake of ``BACKLOG`` deliveries or more since the last turn means the
  broker is handing over a backlog: the next turn is due at once, so acks
  free the prefetch window (rounds still wait for their window).

Besides: the sweep every ``SWEEP_INTERVAL`` (deadlines, retries, metrics),
the pruning of old dead letters every ``PRUNE_INTERVAL``, events at most
every ``EVENT_INTERVAL``, and the broker read at least every ``IDLE_WAIT``
(its confirms are collected then).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

BATCH = 3.0  # a full batch window is this many times the last turn's cost (Config.batch_window)
RAMP = 8  # deliveries beyond the first at which a turn's window is half of the full one
BACKLOG = 500  # deliveries in one turn that mean a backlog (a quarter of the prefetch window)
INTAKE_SLICE = 0.002  # between turns, deliveries are processed at most this often
SWEEP_INTERVAL = 0.25
PRUNE_INTERVAL = 3600.0
EVENT_INTERVAL = 0.02
IDLE_WAIT = 0.05


class Clock(Protocol):
    """Wall time (for the ledger) and monotonic time (for timers), and a pause."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def pause(self, seconds: float, stopping: Callable[[], bool]) -> bool:
        """Wait ``seconds``; True at once if ``stopping`` turns true."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def pause(self, seconds: float, stopping: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if stopping():
                return True
            time.sleep(min(left, 0.05))
        return stopping()


@dataclass
class Window:
    """The earliest time the next batch may start: the end of the last one plus its cost
    times a factor that grows with what it carried, towards ``batch``; at most ``cap``."""

    cap: float
    batch: float = BATCH
    ramp: float = RAMP
    at: float = 0.0  # when the next one may start
    cost: float = 0.0  # what the last one cost

    def factor(self, carried: int) -> float:
        """``batch * (n - 1) / (n - 1 + ramp)`` for ``n`` deliveries carried: 0 for one."""
        beyond = max(0, carried - 1)
        return self.batch * beyond / (beyond + self.ramp) if beyond else 0.0

    def done(self, started: float, ended: float, carried: int, *, at_once: bool = False) -> None:
        """The last batch ran from ``started`` to ``ended`` and took in ``carried`` deliveries."""
        self.cost = max(0.0, ended - started)
        wait = 0.0 if at_once else min(self.cap, self.factor(carried) * self.cost)
        self.at = ended + wait

    def open(self, now: float) -> bool:
        return now >= self.at


@dataclass
class TurnClock:
    """What is due when, for one scheduler loop (times are monotonic seconds)."""

    round_interval: float
    batch: float = BATCH
    ramp: float = RAMP
    backlog: int = BACKLOG
    intake_slice: float = INTAKE_SLICE
    sweep_interval: float = SWEEP_INTERVAL
    prune_interval: float = PRUNE_INTERVAL
    event_interval: float = EVENT_INTERVAL
    idle_wait: float = IDLE_WAIT

    def __post_init__(self) -> None:
        self.turns = Window(self.round_interval, self.batch, self.ramp)
        self.rounds = Window(self.round_interval, self.batch, self.ramp)
        self.next_intake = 0.0
        self.next_sweep = 0.0
        self.next_prune = 0.0
        self.last_events = float("-inf")

    def reset(self) -> None:
        """A new connection: nothing is held back."""
        self.turns.at = self.rounds.at = self.next_intake = 0.0

    # -- turns and rounds -------------------------------------------------------

    def round_due(self, now: float, wanted: bool) -> bool:
        """A round is due: one is wanted (pending work and something changed) and the
        round window has passed."""
        return wanted and self.rounds.open(now)

    def turn_due(self, now: float, owed: int, round_due: bool) -> bool:
        """A full turn is due: ``owed`` deliveries (since the last full turn) or a due
        round wait for one, and the turn window has passed; or ``owed`` is a backlog."""
        return owed >= self.backlog or ((owed > 0 or round_due) and self.turns.open(now))

    def turned(self, started: float, ended: float, owed: int) -> None:
        """A full turn that processed ``owed`` deliveries ran from ``started`` to ``ended``."""
        self.turns.done(started, ended, owed, at_once=owed >= self.backlog)

    def rounded(self, started: float, ended: float, owed: int) -> None:
        """A round ran from ``started`` to ``ended`` in a turn of ``owed`` deliveries."""
        self.rounds.done(started, ended, owed)

    def intake_due(self, now: float) -> bool:
        """Between turns: whether buffered deliveries may be processed now (at most once
        per ``intake_slice``)."""
        if now < self.next_intake:
            return False
        self.next_intake = now + self.intake_slice
        return True

    # -- periodic work ----------------------------------------------------------

    def sweep_due(self, now: float) -> bool:
        if now < self.next_sweep:
            return False
        self.next_sweep = now + self.sweep_interval
        return True

    def prune_due(self, now: float) -> bool:
        if now < self.next_prune:
            return False
        self.next_prune = now + self.prune_interval
        return True

    def events_due(self, now: float) -> bool:
        if now - self.last_events < self.event_interval:
            return False
        self.last_events = now
        return True

    # -- the wait ---------------------------------------------------------------

    def wait(
        self,
        now: float,
        *,
        owed: int,
        round_wanted: bool,
        buffered: bool,
        events: bool,
        changes: bool,
    ) -> float:
        """How long the loop may wait for the broker before it has work of its own:
        until the next full turn, round, intake slice, events or sweep, at most
        ``idle_wait``; 0 if inventory ``changes`` wait."""
        if changes or owed >= self.backlog:
            return 0.0
        wait = min(self.idle_wait, self.next_sweep - now)
        if owed:
            wait = min(wait, self.turns.at - now)
        if round_wanted:
            wait = min(wait, max(self.turns.at, self.rounds.at) - now)
        if buffered:
            wait = min(wait, self.next_intake - now)
        if events:
            wait = min(wait, self.last_events + self.event_interval - now)
        return max(0.0, wait)
