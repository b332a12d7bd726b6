"""Quotas against abuse: what one submitter may ask of the scheduler.

A task request is admitted when all of these hold, checked in this order:

- its priority is at most the cap of the sender's role (``max_priority_by_role``;
  a role the map does not name may not submit);
- its owner has fewer than ``max_pending`` open tasks (pending or in flight),
  counting those admitted earlier in the same intake;
- its owner's token bucket holds a token: ``rate`` tokens a second, at most
  ``burst`` saved up (a refused request takes none).

``admit`` returns the refusal as one sentence, or None. Open tasks are
counted incrementally: ``opened``/``closed`` as the book records a task or
ends it, ``held`` for the admitted ones not yet recorded (``settle`` drops
those, so a duplicate id that was admitted but not recorded is not counted).
A limit of 0 turns that limit off.

Owners are broker users, so the per-owner tables grow with the users the
broker knows, not with the requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; starts full."""

    rate: float
    burst: float
    tokens: float
    last: float

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _who(owner: str) -> str:
    return f"owner {owner!r}" if owner else "the anonymous owner"


@dataclass
class Quotas:
    max_pending: int = 0
    rate: float = 0.0
    burst: int = 0
    max_priority_by_role: Mapping[str, int] = field(default_factory=dict)
    clock: Clock = time.monotonic
    open: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_pending < 0 or self.rate < 0 or self.burst < 0:
            raise ValueError("quota limits must be >= 0 (0 turns a limit off)")
        if self.rate and self.burst < 1:
            raise ValueError("a submit rate needs a burst of at least 1")

    def admit(self, owner: str, role: str, priority: int) -> str | None:
        """Admit one request (counted held) or say why not."""
        refusal = self._priority_refusal(role, priority) or self._pending_refusal(owner)
        if refusal is None and self.rate and not self._bucket(owner).take(self.clock()):
            refusal = (
                f"{_who(owner)} submits faster than {self.rate:g} tasks/s "
                f"(burst {self.burst}): request refused"
            )
        if refusal is None:
            self.held[owner] = self.held.get(owner, 0) + 1
        return refusal

    def _priority_refusal(self, role: str, priority: int) -> str | None:
        cap = self.max_priority_by_role.get(role)
        if cap is None:
            roles = ", ".join(sorted(self.max_priority_by_role)) or "none"
            return f"role {role!r} may not submit tasks (roles that may: {roles})"
        if priority > cap:
            return f"priority {priority} is above the cap of role {role!r} ({cap})"
        return None

    def _pending_refusal(self, owner: str) -> str | None:
        if not self.max_pending:
            return None
        count = self.pending(owner)
        if count >= self.max_pending:
            return f"{_who(owner)} has {count} open tasks, the limit is {self.max_pending}"
        return None

    def _bucket(self, owner: str) -> TokenBucket:
        bucket = self.buckets.get(owner)
        if bucket is None:
            burst = float(self.burst)
            bucket = self.buckets[owner] = TokenBucket(self.rate, burst, burst, self.clock())
        return bucket

    def pending(self, owner: str) -> int:
        """The owner's open tasks, with those admitted and not yet recorded."""
        return self.open.get(owner, 0) + self.held.get(owner, 0)

    def settle(self) -> None:
        """The admitted requests were recorded (``opened``) or were duplicates."""
        self.held.clear()

    def opened(self, owner: str) -> None:
        self.open[owner] = self.open.get(owner, 0) + 1

    def closed(self, owner: str) -> None:
        left = self.open.get(owner, 0) - 1
        if left > 0:
            self.open[owner] = left
        else:
            self.open.pop(owner, None)

    def forget_open(self) -> None:
        """Before the book is rebuilt from the ledger (which reports each task opened)."""
        self.open.clear()
        self.held.clear()
