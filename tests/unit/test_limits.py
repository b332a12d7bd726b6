"""Quotas: the token bucket, the open-task count, the priority cap per role, their config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchmaker.book import Book
from matchmaker.config import ConfigError, load
from matchmaker.ledger import Ledger
from matchmaker.limits import Quotas, TokenBucket
from matchmaker.messages import TaskRequest, TaskResult

CAPS = {"admin": 9, "client": 7}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the token bucket ---------------------------------------------------------------


def test_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, last=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)  # 0.8 of a token
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_bucket_ignores_a_clock_going_back() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, tokens=0.0, last=10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5) and bucket.take(11.0)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_bucket_never_gives_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, float(burst), float(burst), 0.0)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        taken += bucket.take(now)
        assert taken <= burst + rate * now + 1e-9


# -- the quotas ---------------------------------------------------------------------


def test_open_tasks_are_counted_per_owner_up_to_the_limit() -> None:
    q = Quotas(max_pending=3, max_priority_by_role=CAPS)
    assert [q.admit("ann", "client", 0) for _ in range(3)] == [None, None, None]
    assert q.admit("ann", "client", 0) == "owner 'ann' has 3 open tasks, the limit is 3"
    assert q.admit("bob", "client", 0) is None  # another owner has a count of its own
    for _ in range(2):
        q.opened("ann")  # two of the three were recorded, the third was a duplicate id
    q.settle()
    assert q.pending("ann") == 2 and q.pending("bob") == 0
    assert q.admit("ann", "client", 0) is None
    assert q.admit("ann", "client", 0) is not None
    q.opened("ann")
    q.settle()
    q.closed("ann")
    assert q.pending("ann") == 2 and q.admit("ann", "client", 0) is None


def test_closing_more_than_was_opened_does_not_go_negative() -> None:
    q = Quotas(max_pending=1, max_priority_by_role=CAPS)
    q.closed("ann")
    assert q.pending("ann") == 0 and q.open == {}
    assert q.admit("ann", "admin", 0) is None and q.admit("ann", "admin", 0) is not None


def test_the_anonymous_owner_is_named_so() -> None:
    q = Quotas(max_pending=1, max_priority_by_role=CAPS)
    q.opened("")
    assert q.admit("", "admin", 0) == "the anonymous owner has 1 open tasks, the limit is 1"


def test_priority_is_capped_per_role_and_an_unknown_role_may_not_submit() -> None:
    q = Quotas(max_priority_by_role=CAPS)
    assert q.admit("ann", "client", 7) is None
    assert q.admit("ann", "client", 8) == "priority 8 is above the cap of role 'client' (7)"
    assert q.admit("root", "admin", 9) is None
    assert q.admit("w1", "worker", 0) == (
        "role 'worker' may not submit tasks (roles that may: admin, client)"
    )
    assert q.held == {"ann": 1, "root": 1}  # refused requests are not counted


def test_submit_rate_per_owner_with_an_injected_clock() -> None:
    clock = Clock()
    q = Quotas(rate=10.0, burst=5, max_priority_by_role=CAPS, clock=clock)
    assert [q.admit("ann", "client", 0) for _ in range(5)] == [None] * 5
    refusal = q.admit("ann", "client", 0)
    assert refusal == "owner 'ann' submits faster than 10 tasks/s (burst 5): request refused"
    assert q.admit("bob", "client", 0) is None  # a bucket per owner
    clock.now += 0.25  # 2.5 tokens
    assert [q.admit("ann", "client", 0) for _ in range(3)] == [None, None, refusal]


def test_a_request_refused_for_another_reason_takes_no_token() -> None:
    clock = Clock()
    q = Quotas(max_pending=1, rate=1.0, burst=1, max_priority_by_role=CAPS, clock=clock)
    assert q.admit("ann", "client", 9) is not None  # the priority cap
    assert q.admit("ann", "client", 0) is None  # still the one token
    assert q.admit("ann", "client", 0) is not None  # the pending limit, not the rate
    q.settle()
    clock.now += 1.0
    assert q.admit("ann", "client", 0) is None


def test_zero_turns_the_pending_and_rate_limits_off() -> None:
    q = Quotas(max_pending=0, rate=0.0, max_priority_by_role=CAPS)
    assert all(q.admit("ann", "client", 0) is None for _ in range(10_000))
    assert q.buckets == {}


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Quotas(max_pending=-1)
    with pytest.raises(ValueError, match="burst"):
        Quotas(rate=5.0, burst=0)


# -- the book reports what it opens and closes -----------------------------------------


def counted_book(tmp_path: Path, quotas: Quotas) -> Book:
    book = Book(Ledger(tmp_path / "ledger.sqlite"), retry_backoff=1.0, result_grace=5.0)
    book.on_open = lambda t: quotas.opened(t.request.type)  # the type stands in for the owner
    book.on_close = lambda t: quotas.closed(t.request.type)
    return book


def test_the_book_opens_and_closes_each_task_once(tmp_path: Path) -> None:
    quotas = Quotas()
    book = counted_book(tmp_path, quotas)
    book.submit([TaskRequest(i, "sleep", max_attempts=1) for i in "abcde"], 1.0)
    book.submit([TaskRequest("a", "sleep"), TaskRequest("f", "sleep")], 1.5)  # "a": a duplicate
    assert quotas.pending("sleep") == 6
    book.dispatching([("a", "w1"), ("b", "w1"), ("c", "w2")], 2.0)
    book.assigned([("a", "w1", 2.0), ("b", "w1", 2.0), ("c", "w2", 2.0)])
    assert book.result(TaskResult("a", 1, "w1", "succeeded"), 3.0) == "succeeded"
    assert book.result(TaskResult("a", 1, "w1", "succeeded"), 3.1) == "ignored"
    assert book.result(TaskResult("b", 1, "w1", "failed", error="no"), 3.2) == "dead"
    assert book.worker_lost("w2", 3.3, "failed") == 1  # "c" stays open, pending again
    assert book.cancel("d", 3.4) == (True, None)
    assert book.cancel("d", 3.5) == (False, None)
    assert quotas.pending("sleep") == 3  # c, e, f
    book.ledger.commit()
    restarted = Quotas()
    counted_book(tmp_path, restarted).restore(book.ledger.open_tasks())
    assert restarted.pending("sleep") == 3


# -- the config keys ----------------------------------------------------------------


def test_limit_defaults_and_config_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load()
    assert defaults.max_pending_per_owner == 100_000 and defaults.submit_rate_per_owner == 0
    assert dict(defaults.max_priority_by_role) == {"admin": 9, "client": 7}
    assert defaults.max_classes_per_round == 1_000
    file = tmp_path / "mm.toml"
    file.write_text(
        "max_pending_per_owner = 50\nsubmit_rate_per_owner = 2.5\nsubmit_burst = 4\n"
        "max_priority_by_role = {client = 3, admin = 9}\nmax_classes_per_round = 0\n"
    )
    config = load(file)
    assert (config.max_pending_per_owner, config.submit_rate_per_owner) == (50, 2.5)
    assert config.submit_burst == 4 and config.max_classes_per_round == 0
    assert dict(config.max_priority_by_role) == {"client": 3, "admin": 9}
    monkeypatch.setenv("MM_MAX_PRIORITY_BY_ROLE", "client=5, admin=8")
    assert dict(load(file).max_priority_by_role) == {"client": 5, "admin": 8}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("max_pending_per_owner = -1", "max_pending_per_owner must be >= 0"),
        ("submit_rate_per_owner = 5.0\nsubmit_burst = 0", "submit_burst must be at least 1"),
        ("max_priority_by_role = {client = 12}", "the cap of 'client' must be 0..9"),
        ("max_priority_by_role = 'client'", "write role=cap pairs"),
        ("max_priority_by_role = {client = true}", "write role=cap pairs"),
        ("max_priority_by_role = {client = 'x'}", "max_priority_by_role"),
        ("max_classes_per_round = -5", "max_classes_per_round must be >= 0"),
    ],
)
def test_bad_limit_values_say_what_is_wrong(tmp_path: Path, text: str, fragment: str) -> None:
    file = tmp_path / "mm.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load(file)
