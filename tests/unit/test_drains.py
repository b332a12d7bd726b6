"""Drain deadlines as the scheduler keeps them (the eviction itself:
tests/integration/test_cli_ops.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from matchmaker.drains import DrainDeadlines
from matchmaker.ledger import Ledger
from matchmaker.messages import Drain, MessageError, decode, encode


def test_a_deadline_is_due_once_and_an_undrain_or_a_plain_drain_forgets_it() -> None:
    d = DrainDeadlines()
    d.drained("w1", True, 10.0, now=100.0)
    d.drained("w2", True, 0.0, now=100.0)
    d.drained("w3", True, 5.0, now=100.0)
    assert d.left("w1", 104.0) == 6.0 and d.left("nobody", 104.0) is None
    assert d.due(100.0) == ["w2"]
    assert d.due(100.0) == []  # returned once
    d.drained("w3", False, None, now=101.0)  # undrained: its deadline goes
    d.drained("w1", True, None, now=101.0)  # drained again without one: so does this
    assert d.due(1e9) == [] and d.left("w1", 0) is None


def test_the_drain_message_carries_a_deadline_only_with_a_drain() -> None:
    assert decode(encode(Drain("w1", True, 30.0))) == Drain("w1", True, 30.0)
    assert decode(b'{"v":1,"kind":"drain","worker":"w1"}') == Drain("w1")
    for body, text in (
        (b'{"v":1,"kind":"drain","worker":"w1","on":false,"deadline":5}', "for a drain only"),
        (b'{"v":1,"kind":"drain","worker":"w1","deadline":-1}', "between 0"),
        (b'{"v":1,"kind":"drain","worker":"w1","deadline":"soon"}', "number of seconds"),
        (b'{"v":1,"kind":"drain","worker":"w1","deadline":1e12}', "between 0"),
    ):
        try:
            decode(body)
        except MessageError as error:
            assert text in str(error), error
        else:
            raise AssertionError(f"accepted {body!r}")


def test_the_ledger_keeps_deadlines_and_migrates_an_older_drained_table(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE drained (worker TEXT PRIMARY KEY, at REAL NOT NULL)")
    old.execute("INSERT INTO drained VALUES ('before', 1.0)")
    old.commit()
    old.close()
    ledger = Ledger(path)
    try:
        ledger.set_drained("w1", True, 2.0, 62.0)
        ledger.set_drained("w2", True, 2.0)
        ledger.commit()
        assert ledger.drained() == {"before", "w1", "w2"}
        assert ledger.drain_deadlines() == {"w1": 62.0}
        ledger.set_drained("w1", True, 70.0)  # the deadline spent, still drained
        ledger.commit()
        assert ledger.drain_deadlines() == {} and "w1" in ledger.drained()
    finally:
        ledger.close()
    assert DrainDeadlines(Ledger(path, readonly=True).drain_deadlines()).due(1e9) == []
