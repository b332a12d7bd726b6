"""The API's and the CLI's reads (``api.store.Store``) on both backends (each test runs on
SQLite and on PostgreSQL): pages newest first with an opaque cursor, a task's detail,
counts, reasons, waits; a ledger not made yet or not reachable is a sentence."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from matchmaker.api.store import Store, StoreError
from matchmaker.ledger import TaskLedger
from matchmaker.messages import TaskRequest
from membership.agent import free_port
from tests.pg_support import Schemas

Open = Callable[..., TaskLedger]


@dataclass(frozen=True)
class Where:
    ledger_url: str
    state_dir: Path


@pytest.fixture
def store(ledger_url: str, tmp_path: Path) -> Store:
    return Store(Where(ledger_url, tmp_path / "state"))


def write_tasks(ledger: TaskLedger) -> list[str]:
    """Twelve tasks over four submit times (three per turn, as a batch shares its time);
    returns their ids newest first, as a page lists them."""
    ids: list[str] = []
    for turn in range(4):
        batch = [TaskRequest(f"t{turn}-{i}", "sleep", {"n": i}) for i in range(3)]
        ledger.add_owned([(r, "alice" if turn % 2 else "bob") for r in batch], 1000.0 + turn / 3)
        ledger.commit()
        ids = [r.id for r in reversed(batch)] + ids
    return ids


def test_pages_list_every_task_once_newest_first(
    ledger_url: str, open_ledgers: Open, store: Store
) -> None:
    ids = write_tasks(open_ledgers(ledger_url))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = store.tasks({}, 5, cursor)
        seen += [t["id"] for t in page]
        pages += 1
        if cursor is None:
            break
        assert pages < 10, "the cursor does not move on"
    assert seen == ids and pages == 3
    first, cursor = store.tasks({}, 5, None)
    assert cursor is not None and not cursor.isdigit()  # opaque, not a row number
    assert set(first[0]) >= {"id", "type", "state", "attempt", "owner", "submitted_at"}
    assert "payload" not in first[0]  # the list is the summary; the detail has the rest
    owned, more = store.tasks({"owner": "alice"}, 50, None)
    assert [t["id"] for t in owned] == [i for i in ids if i.startswith(("t1", "t3"))]
    assert more is None
    since, _ = store.tasks({"since": 1000.0 + 2 / 3, "state": "pending"}, 50, None)
    assert [t["id"] for t in since] == ids[:6]
    with pytest.raises(ValueError, match="next_cursor of a previous page"):
        store.tasks({}, 5, "12")
    store.close()


def test_a_task_s_detail_counts_reasons_and_waits(
    ledger_url: str, open_ledgers: Open, store: Store
) -> None:
    ledger = open_ledgers(ledger_url)
    ledger.add([TaskRequest("done", "sleep", {"seconds": 1}), TaskRequest("waits", "sleep")], 10.0)
    ledger.commit()
    ledger.assign([("done", 1, "w1", 11.0)])
    ledger.update("done", 12.0, state="running", started_at=12.0)
    ledger.add_log("done", 1, "w1", 14.0, "hello\n")
    ledger.update("done", 14.0, state="succeeded", finished_at=14.0, output={"slept": 1})
    ledger.transitions([("done", 1, "succeeded", "w1", 14.0, None)])
    ledger.set_reasons([("waits", "no live worker has type sleep")])
    ledger.commit()
    task = store.task("done")
    assert task is not None
    assert (task["state"], task["worker"], task["output"]) == ("succeeded", "w1", {"slept": 1})
    assert task["payload"] == {"seconds": 1}
    assert [h["state"] for h in task["history"]] == ["pending", "assigned", "succeeded"]
    assert task["logs"] == [{"attempt": 1, "worker": "w1", "at": 14.0, "text": "hello\n"}]
    assert task["explanation"] == "succeeded on worker w1, not waiting"
    waiting = store.task("waits")
    assert waiting is not None and waiting["explanation"] == "no live worker has type sleep"
    assert store.task("nope") is None
    assert store.counts() == {"succeeded": 1, "pending": 1}
    assert store.reasons() == [{"reason": "no live worker has type sleep", "tasks": 1}]
    assert store.waits() == [{"at": 10.0, "wait": 2.0, "run": 2.0}]
    store.close()


def test_threads_share_the_store(ledger_url: str, open_ledgers: Open, store: Store) -> None:
    """The API reads from a pool of threads: one handle, one read at a time."""
    ids = write_tasks(open_ledgers(ledger_url))
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            for n in range(20):
                task = store.task(ids[n % len(ids)])
                assert task is not None and task["id"] == ids[n % len(ids)]
                page, _ = store.tasks({}, 3, None)
                assert [t["id"] for t in page] == ids[:3]
        except BaseException as error:  # reported below, with the thread's failure
            failures.append(error)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    store.close()


def test_a_sqlite_ledger_not_made_yet_is_a_sentence_until_it_is(
    tmp_path: Path, open_ledgers: Open
) -> None:
    url = f"sqlite://{tmp_path}/later.sqlite"
    store = Store(Where(url, tmp_path))
    with pytest.raises(StoreError, match=r"^the scheduler has no ledger yet$"):
        store.tasks({}, 5, None)
    write_tasks(open_ledgers(url))
    assert len(store.tasks({}, 50, None)[0]) == 12
    store.close()


def test_a_postgresql_server_that_does_not_answer_is_a_sentence(tmp_path: Path) -> None:
    url = f"postgresql://mm:secret@127.0.0.1:{free_port()}/nothing"
    store = Store(Where(url, tmp_path))
    for _ in range(2):  # and again: each read tries afresh
        with pytest.raises(StoreError) as caught:
            store.counts()
        text = str(caught.value)
        assert text.startswith("cannot reach the ledger at postgresql://mm@127.0.0.1:"), text
        assert "secret" not in text and "\n" not in text
    assert not (tmp_path / "ledger.sqlite").exists()
    store.close()


def test_a_postgresql_session_cut_off_costs_no_read(
    pg_url: str, pg_schemas: Schemas, open_ledgers: Open, tmp_path: Path
) -> None:
    """A server restart or a cut connection ends the store's session: its next read opens
    a new one rather than answering with the error."""
    ids = write_tasks(open_ledgers(pg_url))
    store = Store(Where(pg_url, tmp_path))
    [(pid,)] = store._query("SELECT pg_backend_pid()")
    ended = pg_schemas.admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
    assert ended == (True,)
    page, _ = store.tasks({}, 3, None)
    assert [t["id"] for t in page] == ids[:3]
    [(again,)] = store._query("SELECT pg_backend_pid()")
    assert again != pid
    store.close()
