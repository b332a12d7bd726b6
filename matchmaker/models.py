"""The engine's vocabulary: Task, Worker, Policy, Plan, and the constraint model.

A task asks for one slot on a worker that runs its type and satisfies every
constraint. Constraints are hard; preferences only make a worker cheaper.

Constraint forms (``Task.constraints`` maps a worker attribute to one of them):

- a scalar (``"iu"``, ``2``): the attribute must equal it;
- a list, tuple, set or frozenset: the attribute must equal any of them;
- a dict of comparisons ``{">=": 1, "<": 4}``: the attribute must be a number
  satisfying all of them; operators are ``== != < <= > >=``.

The pseudo-attribute ``name`` is the worker's name, so ``{"name": ["w1"]}``
pins a task to a worker and ``preferences={"site": ["iu"]}`` prefers a site.
"""

from __future__ import annotations

import json
import math
import operator
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Scalar = str | int | float
Attributes = Mapping[str, Scalar]

MAX_PRIORITY = 9
MIN_SPEED = 1 / 64  # relative worker speeds (perf, learned rates) are kept in this range
MAX_SPEED = 64.0
STRATEGIES = ("spread", "binpack")

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _scalar(value: Any, what: str) -> Scalar:
    """Normalise a constraint or attribute value: bools and integral floats become ints."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str | int | float):
        return value
    raise ValueError(f"{what}: expected a string or a number, got {type(value).__name__}")


def _number(value: Any) -> float | None:
    """A finite number from a number or a numeric string; None otherwise."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _speed(value: Any, what: str) -> float:
    """A relative speed: a finite number in MIN_SPEED..MAX_SPEED."""
    number = _number(value) if not isinstance(value, str | bool) else None
    if number is None or not MIN_SPEED <= number <= MAX_SPEED:
        raise ValueError(f"{what} must be a number from {MIN_SPEED:g} to {MAX_SPEED:g}")
    return number


@dataclass(frozen=True, slots=True)
class Constraint:
    """One hard requirement on a worker attribute: ``kind`` is ``in`` or ``compare``."""

    attribute: str
    kind: Literal["in", "compare"]
    values: tuple[Scalar, ...] = ()
    comparisons: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, attribute: str, spec: Any) -> Constraint:
        if not isinstance(attribute, str) or not attribute:
            raise ValueError("constraint attribute names must be non-empty strings")
        if isinstance(spec, Mapping):
            if not spec:
                raise ValueError(f"constraint {attribute!r}: empty comparison")
            comparisons = []
            for op, bound in spec.items():
                if op not in _COMPARISONS:
                    known = " ".join(_COMPARISONS)
                    raise ValueError(f"constraint {attribute!r}: unknown operator {op!r} ({known})")
                number = _number(bound)
                if number is None or isinstance(bound, str):
                    raise ValueError(
                        f"constraint {attribute!r}: {op} needs a number, got {bound!r}"
                    )
                comparisons.append((op, number))
            return cls(attribute, "compare", comparisons=tuple(sorted(comparisons)))
        if isinstance(spec, list | tuple | set | frozenset):
            if not spec:
                raise ValueError(f"constraint {attribute!r}: empty list of allowed values")
            values = {_scalar(v, f"constraint {attribute!r}") for v in spec}
            return cls(attribute, "in", values=tuple(sorted(values, key=repr)))
        return cls(attribute, "in", values=(_scalar(spec, f"constraint {attribute!r}"),))

    def allows(self, value: Scalar | None) -> bool:
        if value is None:
            return False
        if self.kind == "in":
            if value in self.values:
                return True
            text = str(value)
            return any(text == str(v) for v in self.values)
        number = _number(value)
        return number is not None and all(_COMPARISONS[op](number, b) for op, b in self.comparisons)

    def describe(self) -> str:
        if self.kind == "compare":
            return " and ".join(f"{self.attribute}{op}{bound:g}" for op, bound in self.comparisons)
        if len(self.values) == 1:
            return f"{self.attribute}={self.values[0]}"
        return f"{self.attribute} in {{{','.join(map(str, self.values))}}}"

    def to_json(self) -> Any:
        if self.kind == "compare":
            return dict(self.comparisons)
        return list(self.values) if len(self.values) > 1 else self.values[0]


def parse_constraints(spec: Mapping[str, Any] | Iterable[Constraint]) -> tuple[Constraint, ...]:
    """Constraints in canonical order, from a mapping or already parsed."""
    if not spec:
        return ()
    if isinstance(spec, Mapping):
        parsed = [Constraint.parse(k, v) for k, v in spec.items()]
    else:
        parsed = list(spec)
    return tuple(sorted(parsed, key=lambda c: c.attribute))


def worker_value(worker: Worker, attribute: str) -> Scalar | None:
    """A worker's value for an attribute, with ``name`` as a pseudo-attribute."""
    if attribute == "name":
        return worker.name
    return worker.attributes.get(attribute)


@dataclass(frozen=True, slots=True)
class Task:
    """A unit of work waiting for a slot.

    ``priority`` is 0..9, higher first. ``submitted_at`` is seconds on the
    caller's clock; with ``Policy.now`` it gives the task's age for aging.
    ``class_key`` (derived) names the task's equivalence class before aging.
    """

    id: str
    type: str
    priority: int = 0
    constraints: tuple[Constraint, ...] = ()
    preferences: tuple[Constraint, ...] = ()
    submitted_at: float = 0.0
    class_key: str = field(default="", compare=False, repr=False)

    def __init__(
        self,
        id: str,
        type: str,
        priority: int = 0,
        constraints: Mapping[str, Any] | Iterable[Constraint] = (),
        preferences: Mapping[str, Any] | Iterable[Constraint] = (),
        submitted_at: float = 0.0,
    ) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError("task id must be a non-empty string")
        if not isinstance(type, str) or not type:
            raise ValueError(f"task {id!r}: type must be a non-empty string")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"task {id!r}: priority must be an integer 0..{MAX_PRIORITY}")
        if not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"task {id!r}: priority {priority} is outside 0..{MAX_PRIORITY}")
        try:
            cons = parse_constraints(constraints)
            prefs = parse_constraints(preferences)
        except ValueError as error:
            raise ValueError(f"task {id!r}: {error}") from None
        submitted = float(submitted_at)
        if not math.isfinite(submitted):
            raise ValueError(f"task {id!r}: submitted_at must be a finite number")
        key = type  # the common case: no constraints, no preferences
        if cons or prefs or type.startswith("["):
            key = json.dumps(
                [
                    type,
                    [[c.attribute, c.to_json()] for c in cons],
                    [[p.attribute, p.to_json()] for p in prefs],
                ],
                separators=(",", ":"),
            )
        set_ = object.__setattr__
        set_(self, "id", id)
        set_(self, "type", type)
        set_(self, "priority", priority)
        set_(self, "constraints", cons)
        set_(self, "preferences", prefs)
        set_(self, "submitted_at", submitted)
        set_(self, "class_key", sys.intern(key))

    def feasible_on(self, worker: Worker) -> bool:
        """Whether the worker runs this type and meets every constraint (ignores free slots)."""
        return self.type in worker.capabilities and all(
            c.allows(worker_value(worker, c.attribute)) for c in self.constraints
        )


@dataclass(frozen=True, slots=True)
class Worker:
    """A live worker: it runs ``capabilities`` and has ``slots - running`` free slots.

    ``perf`` is its advertised relative speed (1.0 = the reference machine; a
    task runs ``perf`` times as fast), the prior for every task type;
    ``speeds`` maps a task type to a learned relative speed that overrides it
    (``matchmaker.rates.ServiceRates``). Speeds lie in ``MIN_SPEED..MAX_SPEED``.
    ``profile`` (derived) names what the worker offers, without its name and
    load; ``timed`` (derived) says whether it has a speed other than 1.0.
    """

    name: str
    capabilities: frozenset[str]
    slots: int
    running: int = 0
    attributes: Mapping[str, Scalar] = field(default_factory=dict)
    perf: float = 1.0
    speeds: Mapping[str, float] = field(default_factory=dict)
    profile: str = field(default="", compare=False, repr=False)
    timed: bool = field(default=False, compare=False, repr=False)

    def __init__(
        self,
        name: str,
        capabilities: Iterable[str],
        slots: int,
        running: int = 0,
        attributes: Mapping[str, Any] | None = None,
        perf: float = 1.0,
        speeds: Mapping[str, float] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("worker name must be a non-empty string")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
            raise ValueError(f"worker {name!r}: slots must be a non-negative integer")
        if isinstance(running, bool) or not isinstance(running, int) or running < 0:
            raise ValueError(f"worker {name!r}: running must be a non-negative integer")
        caps = frozenset([capabilities] if isinstance(capabilities, str) else capabilities)
        attrs = {
            str(k): _scalar(v, f"worker {name!r} attribute {k!r}")
            for k, v in (attributes or {}).items()
        }
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "capabilities", caps)
        set_(self, "slots", slots)
        set_(self, "running", running)
        set_(self, "attributes", attrs)
        set_(self, "perf", _speed(perf, f"worker {name!r} perf"))
        set_(
            self,
            "speeds",
            {
                str(t): _speed(v, f"worker {name!r} speed of {t!r}")
                for t, v in (speeds or {}).items()
            },
        )
        set_(self, "timed", self.perf != 1.0 or bool(self.speeds))
        profile = json.dumps([sorted(caps), sorted(attrs.items())], separators=(",", ":"))
        set_(self, "profile", sys.intern(profile))

    def __hash__(self) -> int:
        return hash((self.name, self.capabilities, self.slots, self.running))

    def _copy(self, **changed: Any) -> Worker:
        """The same worker with ``changed`` fields (the rest was checked when it was made)."""
        copy = object.__new__(Worker)
        for name in Worker.__slots__:
            object.__setattr__(copy, name, changed.get(name, getattr(self, name)))
        return copy

    def with_running(self, running: int) -> Worker:
        """The same worker with ``running`` tasks."""
        if isinstance(running, bool) or not isinstance(running, int) or running < 0:
            raise ValueError(f"worker {self.name!r}: running must be a non-negative integer")
        return self._copy(running=running)

    def with_slots(self, slots: int) -> Worker:
        """The same worker with ``slots`` places (pipelining: a few beyond its own)."""
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
            raise ValueError(f"worker {self.name!r}: slots must be a non-negative integer")
        return self._copy(slots=slots)

    def with_speeds(self, speeds: Mapping[str, float]) -> Worker:
        """The same worker with learned speeds per type (``ServiceRates.speeds``)."""
        checked = {
            str(t): _speed(v, f"worker {self.name!r} speed of {t!r}") for t, v in speeds.items()
        }
        return self._copy(speeds=checked, timed=self.perf != 1.0 or bool(checked))

    @property
    def free(self) -> int:
        return max(0, self.slots - self.running)

    def speed(self, task_type: str) -> float:
        """Its relative speed on a task type: the learned one, else ``perf``."""
        return self.speeds.get(task_type, self.perf)


@dataclass(frozen=True, slots=True)
class Policy:
    """How a round trades placements off.

    - ``strategy``: ``spread`` balances load (the k-th task on a worker costs
      its load after placement); ``binpack`` fills the busiest workers first.
    - ``priority_weight``: cost of one priority band; raised internally to one
      more than the largest preference bonus, so a preference never beats priority.
    - ``aging_interval``: seconds of waiting that raise a task one priority
      band (0 disables aging). A task of priority p outranks fresh work of
      priority q > p after waiting ``(q - p + 1) * aging_interval`` seconds.
    - ``preference_bonus``: cost saved for each matched preference.
    - ``now``: the caller's clock for ages; None means no aging this round.
    """

    strategy: str = "spread"
    priority_weight: int = 1
    aging_interval: float = 60.0
    preference_bonus: int = 1
    now: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}"
            )
        if self.priority_weight < 1:
            raise ValueError("priority_weight must be at least 1")
        if self.preference_bonus < 0:
            raise ValueError("preference_bonus must not be negative")
        if not (self.aging_interval >= 0 and math.isfinite(self.aging_interval)):
            raise ValueError("aging_interval must be a finite number of seconds >= 0")


class Reason(StrEnum):
    """Why a task stayed unplaced: one code per cause a person can act on."""

    NO_WORKER_FOR_TYPE = "no_worker_for_type"
    CONSTRAINTS = "constraints"
    FULL = "full"
    OUTRANKED = "outranked"
    CONTENDED = "contended"


@dataclass(frozen=True, slots=True)
class Unplaced:
    """An unplaced task's reason: a code for programs, a sentence for people."""

    code: Reason
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of one round: where each placed task goes and why the rest wait."""

    assignments: dict[str, str]
    unplaced: dict[str, Unplaced]
    placed: int
    cost: int
    classes: int = 0
    worker_groups: int = 0
