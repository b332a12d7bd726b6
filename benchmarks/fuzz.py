"""Fuzzed messages for the fault harness (``benchmarks.fault``): hostile input, each marked.

Every message carries a unique marker (``fz`` + 10 hex digits) at its start where
the format allows (a ``"fuzz"`` key first in an object, a prefix of junk bytes), so
a dead letter, even truncated, names the message it came from. Families:

- on ``mm.requests``: invalid JSON, binary junk, not an object, wrong versions,
  unknown kinds, wrong types at every field of ``submit``, ``cancel`` and ``drain``,
  deep nesting (255 to 1,100 levels) at every field, huge fields just under and
  just over the 256 KiB limit, hostile constraints and preferences;
- on ``mm.results``: the same for ``result`` and ``results`` messages, and a deep
  ``output`` claimed for a real task in flight;
- forged results: well-formed results for real task ids from a worker that does
  not exist or is not the one the attempt went to. These are valid messages: the
  scheduler must change nothing for them (``expect == "ignored"``), not dead-letter
  them necessarily.

Each message other than a forged result is invalid by construction and must be
dead-lettered exactly once per unit (``units``: a ``results`` batch of bad items
is one unit per item, as the scheduler refuses each item on its own).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from matchmaker.messages import MAX_MESSAGE_BYTES

REQUESTS = "mm.requests"
RESULTS = "mm.results"
MARKER = re.compile(rb"fz[0-9a-f]{10}(?:i[0-9])?")  # a message's, or an item's of a batch
MARK = "@@MARK@@"  # placeholder replaced by the marker after encoding
RAW = "@@RAW@@"  # placeholder replaced by raw JSON text after encoding
DEPTHS = (255, 300, 600, 1000, 1023, 1100)  # orjson reads 1,024 levels, writes 254
# a batch item too deep to write again: its letter may describe it instead of carrying it
UNMARKED = {
    "batch:results.deep-item",
    "batch:results.deep-item.again",
    "batch:results.deep-dict-item",
}
HUGE_EVERY = 40  # one huge message in this many (each is ~256 KiB)
UNMARKED_EVERY = 50  # one batch with a too-deep item in this many (several in a short run)
FORGE_EVERY = 10  # one forged result in this many


@dataclass(frozen=True)
class Target:
    """A real task a forged result claims: its id, current attempt and worker (if any)."""

    id: str
    attempt: int
    worker: str | None


@dataclass(frozen=True)
class Fuzz:
    """One fuzzed message as sent: its marker, family, queue and body.

    ``expect`` is ``dead`` (each marker in ``units`` dead-lettered once) or
    ``ignored`` (a forged result: nothing may change; ``target`` is the task it claims,
    ``worker`` the worker it claims to be).
    """

    marker: str
    family: str
    queue: str
    body: bytes
    expect: str = "dead"
    units: tuple[str, ...] = ()
    target: str | None = None
    worker: str | None = None


# -- raw JSON pieces ------------------------------------------------------------------


def nest_list(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def nest_dict(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"a":' * depth + inner + b"}" * depth


def with_raw(body: dict[str, Any], raw: bytes) -> bytes:
    """``body`` encoded, with the one ``RAW`` placeholder value replaced by ``raw``."""
    encoded = orjson.dumps(body)
    placeholder = orjson.dumps(RAW)
    assert encoded.count(placeholder) == 1, "one placeholder per body"
    return encoded.replace(placeholder, raw)


def submit(marker: str, **fields: Any) -> dict[str, Any]:
    """A valid ``submit`` but for ``fields`` (``RAW`` marks where raw text goes)."""
    body = {
        "fuzz": marker,
        "v": 1,
        "kind": "submit",
        "id": marker,
        "type": "sleep",
        "payload": {"seconds": 0},
        "priority": 0,
        "constraints": {},
        "preferences": {},
        "max_attempts": 1,
        "timeout": 1.0,
    }
    body.update(fields)
    return body


def result(marker: str, **fields: Any) -> dict[str, Any]:
    """A valid ``result`` for an unknown task but for ``fields``."""
    body = {
        "fuzz": marker,
        "v": 1,
        "kind": "result",
        "id": marker,
        "attempt": 1,
        "worker": f"forger-{marker}",
        "state": "succeeded",
        "started_at": 1.0,
        "finished_at": 2.0,
        "output": {},
        "error": None,
    }
    body.update(fields)
    return body


# -- the invalid cases: (family, queue, builder(marker, rng) -> body) -------------------

Builder = Callable[[str, random.Random], bytes]
Case = tuple[str, str, Builder]

WRONG_SUBMIT: dict[str, list[Any]] = {
    "v": [0, 2, -1, "1", 1.5, 1.0, True, None, [1], {"v": 1}],
    "kind": [
        1,
        None,
        [],
        {},
        "",
        "Submit",
        "submit ",
        "result",
        "dispatch",
        "results",
        "dispatches",
        "events",
        "explode",
    ],
    "id": [1, None, [], {}, True, "", "has space", "a" * 129, "../etc/passwd", "nul\x00", "é"],
    "type": [1, None, [], {}, True, "", "no such type", "bad/type", "-lead", "x" * 129],
    "payload": [[], "text", 1, None, True, 1.5],
    "priority": [-1, 10, 1.5, "5", True, None, [], {}, 2**63 - 1, -(2**63)],
    "constraints": [[], "site=iu", 1, None, True],
    "preferences": [[], "site=iu", 1, None, True],
    "max_attempts": [0, 101, -1, 1.5, "3", True, None, []],
    "timeout": [0, -1, 7 * 24 * 3600 + 1, "10", True, None, [], {}],
}
WRONG_RESULT: dict[str, list[Any]] = {
    "v": [0, 2, "1", True, None],
    "kind": ["submit", "dispatch", "explode", 1, None],
    "id": [1, None, [], "", "has space", "a" * 129],
    "attempt": [0, 101, "1", 1.5, True, None],
    "worker": [1, None, [], "", "has space"],
    "state": ["done", "pending", "dead", None, 1, []],
    "started_at": ["x", -1, True, []],
    "finished_at": ["x", -1, True, {}],
    "output": [[], "x", 1, True],
    "error": [1, [], {}, True],
    "received_at": ["x", -1, True],
}
HOSTILE_CONSTRAINTS: list[Any] = [
    {"gpu": {"~=": 1}},
    {"gpu": {"$gt": 1}},
    {"gpu": {">=": "1"}},
    {"gpu": {">=": None}},
    {"gpu": {">=": [1]}},
    {"gpu": {">=": 1, "or": 2}},
    {"gpu": {}},
    {"gpu": []},
    {"gpu": [None]},
    {"gpu": [[1]]},
    {"gpu": [{"a": 1}]},
    {"gpu": None},
    {"": 1},
    {"site": [*range(5000), None]},  # a long list, its last value bad
    {**{f"a{i}": i for i in range(2000)}, "bad": {}},  # many attributes, the last bad
]


def _wrong_type_cases() -> list[Case]:
    cases: list[Case] = []
    for field, values in WRONG_SUBMIT.items():
        for value in values:
            body = submit(MARK, **{field: value})
            cases.append((f"type:submit.{field}", REQUESTS, _fill(body)))
    for field, values in WRONG_RESULT.items():
        for value in values:
            body = result(MARK, **{field: value})
            cases.append((f"type:result.{field}", RESULTS, _fill(body)))
    controls: list[dict[str, Any]] = [
        {"v": 1, "kind": "cancel", "id": 1},
        {"v": 1, "kind": "cancel", "id": None},
        {"v": 1, "kind": "cancel", "id": "has space"},
        {"v": 1, "kind": "cancel"},
        {"v": 1, "kind": "drain", "worker": 1},
        {"v": 1, "kind": "drain", "worker": "nobody", "on": "yes"},
        {"v": 1, "kind": "drain", "worker": None},
        {"v": 1, "kind": "drain"},
    ]
    for control in controls:
        cases.append((f"type:{control['kind']}", REQUESTS, _fill({"fuzz": MARK, **control})))
    return cases


def _fill(template: dict[str, Any], raw: bytes | None = None) -> Builder:
    """A builder: ``template`` encoded, its ``MARK`` placeholders replaced by the marker."""
    encoded = orjson.dumps(template) if raw is None else with_raw(template, raw)

    def build(marker: str, _rng: random.Random) -> bytes:
        return encoded.replace(MARK.encode(), marker.encode())

    return build


def _deep_cases() -> list[Case]:
    """Deep nesting at every field, as lists and as objects, 255-1,100 levels."""
    cases: list[Case] = []
    submit_fields = [*WRONG_SUBMIT, "extra"]
    for field in submit_fields:
        for style, nest in (("list", nest_list), ("dict", nest_dict)):
            cases.append((f"deep:submit.{field}.{style}", REQUESTS, _deep(submit, field, nest)))
    for where in ("payload.value", "constraints.value", "preferences.value"):
        outer, _ = where.split(".")
        cases.append((f"deep:submit.{where}", REQUESTS, _deep_inside(submit, outer, "k")))
    for field in [*WRONG_RESULT, "extra"]:
        for style, nest in (("list", nest_list), ("dict", nest_dict)):
            cases.append((f"deep:result.{field}.{style}", RESULTS, _deep(result, field, nest)))
    cases.append(("deep:result.output.value", RESULTS, _deep_inside(result, "output", "k")))
    cases.append(("deep:top-level", REQUESTS, _deep_top))
    return cases


def _deep(make: Callable[..., dict[str, Any]], field: str, nest: Callable[..., bytes]) -> Builder:
    def build(marker: str, rng: random.Random) -> bytes:
        depth = rng.choice(DEPTHS)
        return with_raw(make(marker, **{field: RAW}), nest(depth))

    return build


def _deep_inside(make: Callable[..., dict[str, Any]], field: str, key: str) -> Builder:
    def build(marker: str, rng: random.Random) -> bytes:
        depth = rng.choice(DEPTHS)
        nest = rng.choice((nest_list, nest_dict))
        return with_raw(make(marker, **{field: {key: RAW}}), nest(depth))

    return build


def _deep_top(marker: str, rng: random.Random) -> bytes:
    return nest_list(rng.choice(DEPTHS), orjson.dumps(marker))


def _junk_cases() -> list[Case]:
    def junk(marker: str, rng: random.Random) -> bytes:
        return marker.encode() + b"|" + rng.randbytes(rng.randint(1, 4096))

    def bad_utf8(marker: str, _rng: random.Random) -> bytes:
        return b'{"fuzz":"' + marker.encode() + b'","v":1,"id":"\xff\xfe\xc0"}'

    def nul(marker: str, _rng: random.Random) -> bytes:
        return marker.encode() + b"\x00" * 64

    def bom(marker: str, _rng: random.Random) -> bytes:
        return b"\xef\xbb\xbf" + orjson.dumps(submit(marker))

    def truncated(marker: str, _rng: random.Random) -> bytes:
        return orjson.dumps(submit(marker))[:-7]

    def trailing(marker: str, _rng: random.Random) -> bytes:
        return orjson.dumps(submit(marker)) + b" x"

    def literal(text: bytes) -> Builder:
        def build(marker: str, _rng: random.Random) -> bytes:
            return text.replace(b"MARK", marker.encode())

        return build

    cases: list[Case] = []
    for queue in (REQUESTS, RESULTS):
        side = "requests" if queue == REQUESTS else "results"
        cases += [
            (f"junk:{side}.binary", queue, junk),
            (f"junk:{side}.bad-utf8", queue, bad_utf8),
            (f"junk:{side}.nul", queue, nul),
            (f"json:{side}.bom", queue, bom),
            (f"json:{side}.truncated", queue, truncated),
            (f"json:{side}.trailing", queue, trailing),
            (f"json:{side}.nan", queue, literal(b'{"fuzz":"MARK","v":1,"priority":NaN}')),
            (f"json:{side}.single-quotes", queue, literal(b"{'fuzz':'MARK','v':1}")),
            (f"json:{side}.comment", queue, literal(b'{"fuzz":"MARK"/*c*/,"v":1}')),
            (f"json:{side}.infinity", queue, literal(b'{"fuzz":"MARK","v":1,"timeout":1e400}')),
            (f"json:{side}.surrogate", queue, literal(b'{"fuzz":"MARK","v":1,"id":"\\ud800"}')),
            (f"object:{side}.string", queue, literal(b'"MARK"')),
            (f"object:{side}.array", queue, literal(b'["MARK",{"v":1,"kind":"submit"}]')),
            (f"object:{side}.number", queue, literal(b"1 MARK")),
            (f"object:{side}.null", queue, literal(b"null MARK")),
        ]
    return cases


def _constraint_cases() -> list[Case]:
    cases: list[Case] = []
    for n, spec in enumerate(HOSTILE_CONSTRAINTS):
        for field in ("constraints", "preferences"):
            body = submit(MARK, **{field: spec})
            cases.append((f"constraints:{field}.{n}", REQUESTS, _fill(body)))
    for field in ("constraints", "preferences"):
        for depth in (50, 300, 1000):
            body = submit(MARK, **{field: {"gpu": RAW}})
            cases.append(
                (f"constraints:{field}.deep{depth}", REQUESTS, _fill(body, nest_list(depth)))
            )
    return cases


def _batch_cases() -> list[Case]:
    """``results`` batches: the whole refused, or each bad item refused on its own."""

    def not_a_list(marker: str, _rng: random.Random) -> bytes:
        return orjson.dumps({"fuzz": marker, "v": 1, "kind": "results", "results": marker})

    def empty(marker: str, _rng: random.Random) -> bytes:
        return orjson.dumps({"fuzz": marker, "v": 1, "kind": "results", "results": []})

    def deep_item(marker: str, rng: random.Random) -> bytes:
        inner = nest_list(rng.choice(DEPTHS[:4]), orjson.dumps(marker))
        return with_raw({"fuzz": marker, "v": 1, "kind": "results", "results": [RAW]}, inner)

    def bad_items(marker: str, _rng: random.Random) -> bytes:
        bad: list[dict[str, Any]] = [{"state": "done"}, {"attempt": 0}, {"output": [1]}]
        items = [result(f"{marker}i{k}", **fields) for k, fields in enumerate(bad)]
        return orjson.dumps({"fuzz": marker, "v": 1, "kind": "results", "results": items})

    def deep_dict_item(marker: str, rng: random.Random) -> bytes:
        inner = with_raw({"fuzz": marker, "id": RAW}, nest_list(rng.choice(DEPTHS[:4])))
        return with_raw({"fuzz": marker, "v": 1, "kind": "results", "results": [RAW]}, inner)

    return [
        ("batch:results.bad-items", RESULTS, bad_items),
        ("batch:results.deep-item", RESULTS, deep_item),
        ("batch:results.deep-item.again", RESULTS, deep_item),  # the same shape twice a cycle
        ("batch:results.deep-dict-item", RESULTS, deep_dict_item),
        ("batch:results.not-a-list", RESULTS, not_a_list),
        ("batch:results.empty", RESULTS, empty),
    ]


def _huge_cases() -> list[Case]:
    """Fields just under and just over the 256 KiB message limit."""

    def sized(field: str, total: int, valid_rest: bool) -> Builder:
        def build(marker: str, _rng: random.Random) -> bytes:
            fields: dict[str, Any] = {field: ""} if valid_rest else {field: "", "priority": -1}
            empty = len(orjson.dumps(submit(marker, **fields)))
            fields[field] = "x" * (total - empty)
            body = orjson.dumps(submit(marker, **fields))
            assert len(body) == total
            return body

        return build

    def payload(total: int) -> Builder:
        def build(marker: str, _rng: random.Random) -> bytes:
            empty = len(orjson.dumps(submit(marker, payload={"blob": ""})))
            body = orjson.dumps(submit(marker, payload={"blob": "x" * (total - empty)}))
            assert len(body) == total
            return body

        return build

    def grows(marker: str, _rng: random.Random) -> bytes:
        numbers = b",".join([b"1e15"] * ((MAX_MESSAGE_BYTES - 400) // 5))
        return with_raw(submit(marker, payload={"n": RAW}), b"[" + numbers + b"]")

    def output(total: int) -> Builder:
        def build(marker: str, _rng: random.Random) -> bytes:
            empty = len(orjson.dumps(result(marker, output={"blob": ""})))
            return orjson.dumps(result(marker, output={"blob": "x" * (total - empty)}))

        return build

    under, over = MAX_MESSAGE_BYTES - 16, MAX_MESSAGE_BYTES + 1
    return [
        ("huge:submit.id.under", REQUESTS, sized("id", under, True)),
        ("huge:submit.type.under", REQUESTS, sized("type", under, True)),
        ("huge:submit.kind.under", REQUESTS, sized("kind", under, True)),
        ("huge:submit.payload.at-limit", REQUESTS, sized("payload", MAX_MESSAGE_BYTES, False)),
        ("huge:submit.payload.over", REQUESTS, payload(over)),
        ("huge:submit.payload.over+4k", REQUESTS, payload(MAX_MESSAGE_BYTES + 4096)),
        ("huge:submit.payload.dispatch-over", REQUESTS, grows),
        ("huge:result.output.over", RESULTS, output(over)),
    ]  # fmt: skip


# -- forged results (valid messages that must change nothing) --------------------------

FORGERIES = ("fake-worker-succeeded", "fake-worker-running", "other-worker-succeeded",
             "other-worker-failed", "future-attempt", "unknown-task")  # fmt: skip


def forged(marker: str, variant: str, target: Target | None, workers: Sequence[str]) -> Fuzz:
    """A well-formed result claiming ``target`` (a real task) that it has no right to."""
    fake = f"forger-{marker}"
    task_id, attempt, current = (
        (target.id, target.attempt, target.worker) if target else (marker, 1, None)
    )
    others = [w for w in workers if w != current] or [fake]
    fields: dict[str, Any] = {"id": task_id, "attempt": attempt, "worker": fake}
    if variant == "fake-worker-succeeded":
        fields.update(output={"forged": marker})
    elif variant == "fake-worker-running":
        fields.update(state="running", output=None, finished_at=None)
    elif variant == "other-worker-succeeded":
        fields.update(worker=others[0], output={"forged": marker})
    elif variant == "other-worker-failed":
        fields.update(worker=others[-1], state="failed", output=None, error=f"forged {marker}")
    elif variant == "future-attempt":
        fields.update(attempt=min(attempt + 5, 100), output={"forged": marker})
    else:  # unknown-task
        fields.update(id=f"{marker}-ghost", output={"forged": marker})
    body = orjson.dumps(result(marker, **fields))
    return Fuzz(marker, f"forged:{variant}", RESULTS, body, "ignored", (),
                fields["id"], fields["worker"])  # fmt: skip


def deep_output_forged(marker: str, target: Target, rng: random.Random) -> Fuzz:
    """A result for a real task in flight whose ``output`` is nested past what can be stored."""
    fields = {"id": target.id, "attempt": target.attempt, "output": {"k": RAW}}
    if target.worker:
        fields["worker"] = target.worker
    body = with_raw(result(marker, **fields), nest_dict(rng.choice(DEPTHS[:4])))
    return Fuzz(marker, "deep:result.output.real-task", RESULTS, body, "dead", (marker,), target.id)


# -- the generator ---------------------------------------------------------------------


class Fuzzer:
    """Fuzzed messages in a fixed, seeded order that covers every case once per cycle
    (huge ones one in ``HUGE_EVERY``, forged results one in ``FORGE_EVERY``, batches with a
    too-deep item one in ``UNMARKED_EVERY``)."""

    def __init__(self, seed: int, families: Sequence[str] = ()) -> None:
        self.rng = random.Random(seed)
        self.run = f"{self.rng.getrandbits(16):04x}"
        self.count = 0

        def wanted(case: Case) -> bool:
            return not families or any(case[0].startswith(f) for f in families)

        cases = [c for c in self._cases() if wanted(c)]
        self.cases = [c for c in cases if c[0] not in UNMARKED]
        self.unmarked = itertools.cycle([c for c in cases if c[0] in UNMARKED] or [None])
        self.huge = [c for c in _huge_cases() if wanted(c)]
        self.forge = not families or any(f.startswith("forged") for f in families)
        self.deep_output = not families or any("deep:result" in f for f in families)
        self._cycle: Iterator[Case] = iter(())
        self._huge_cycle: Iterator[Case] = iter(())
        if not (self.cases or self.huge or self.forge):
            raise ValueError(f"no fuzz case matches the families {', '.join(families)}")

    @staticmethod
    def _cases() -> list[Case]:
        return [*_junk_cases(), *_wrong_type_cases(), *_deep_cases(), *_constraint_cases(),
                *_batch_cases()]  # fmt: skip

    def marker(self) -> str:
        self.count += 1
        return f"fz{self.run}{self.count:06x}"

    def next(self, target: Callable[[], Target | None], workers: Sequence[str]) -> Fuzz:
        """The next fuzzed message; ``target`` picks a real task for the forged ones."""
        n = self.count + 1
        marker = self.marker()
        if self.huge and n % HUGE_EVERY == 0:
            return self._build(marker, self._next_huge())
        if n % UNMARKED_EVERY == UNMARKED_EVERY // 2 and (case := next(self.unmarked)):
            return self._build(marker, case)
        if self.forge and n % FORGE_EVERY == 0:
            variant = FORGERIES[(n // FORGE_EVERY) % len(FORGERIES)]
            return forged(marker, variant, target(), workers)
        if self.deep_output and n % FORGE_EVERY == 5:
            real = target()
            if real is not None:
                return deep_output_forged(marker, real, self.rng)
        if not self.cases:
            return self._build(marker, self._next_huge())
        return self._build(marker, self._next_case())

    def _next_case(self) -> Case:
        try:
            return next(self._cycle)
        except StopIteration:
            order = list(self.cases)
            self.rng.shuffle(order)
            self._cycle = iter(order)
            return next(self._cycle)

    def _next_huge(self) -> Case:
        try:
            return next(self._huge_cycle)
        except StopIteration:
            self._huge_cycle = iter(list(self.huge))
            return next(self._huge_cycle)

    def _build(self, marker: str, case: Case) -> Fuzz:
        family, queue, build = case
        body = build(marker, self.rng)
        units = () if family in UNMARKED else _units(marker, body)
        return Fuzz(marker, family, queue, body, "dead", units)


def _units(marker: str, body: bytes) -> tuple[str, ...]:
    """What must be dead-lettered: the batch items marked ``<marker>i<k>``, else the message."""
    found = {m.decode() for m in MARKER.findall(body[:65536])}
    items = sorted(m for m in found if m.startswith(marker) and m != marker)
    return tuple(items) or (marker,)


def markers_in(body: bytes) -> set[str]:
    """The markers a dead letter's body carries."""
    return {m.decode() for m in MARKER.findall(body)}


def case_families() -> list[str]:
    """Every case's family name (for ``--fuzz-families`` and the report)."""
    return sorted(
        {c[0] for c in [*Fuzzer._cases(), *_huge_cases()]} | {f"forged:{v}" for v in FORGERIES}
    )
