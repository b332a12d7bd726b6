"""The scheduler's notices to owners (``matchmaker/notices.py``), the wire messages they use,
and the client rights that keep each user to its own notices: pure logic on a real ledger
file, no broker (``tests/integration/test_client.py`` has the whole system)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from matchmaker import identity
from matchmaker import notices as notices_module
from matchmaker.book import Book
from matchmaker.config import Config
from matchmaker.identity import Senders
from matchmaker.ledger import Ledger
from matchmaker.messages import (
    MAX_MESSAGE_BYTES,
    MAX_STATUS_IDS,
    MessageError,
    Notice,
    Status,
    TaskRequest,
    TaskResult,
    decode,
    decode_notices,
    encode,
)
from matchmaker.notices import Notices, bodies
from matchmaker.scheduler.memory import FakeClock, MemoryBroker
from matchmaker.service import Scheduler
from matchmaker.wire import broker
from membership.inventory import LiveWorker
from membership.tags import Advertised


def book_with_tasks(tmp_path: Path, notices: Notices) -> Book:
    book = Book(Ledger(tmp_path / "ledger.sqlite"), retry_backoff=0.0)
    book.on_close = notices.closed
    requests = [
        (TaskRequest("ok", "sleep", max_attempts=1), "alice"),
        (TaskRequest("bad", "sleep", max_attempts=1), "alice"),
        (TaskRequest("open", "sleep"), "alice"),
        (TaskRequest("bobs", "sleep"), "bob"),
    ]
    book.submit_owned(requests, 1.0)
    book.dispatching([("ok", "w1"), ("bad", "w1")], 2.0)
    book.result(TaskResult("ok", 1, "w1", "succeeded", 2.0, 3.0, {"n": 1}), 3.0)
    book.result(TaskResult("bad", 1, "w1", "failed", 2.0, 3.0, error="boom"), 3.0)
    return book


def published(notices: Notices) -> dict[str, list[Notice]]:
    out: dict[str, list[Notice]] = {}

    def send(owner: str, body: bytes) -> None:
        out.setdefault(owner, []).extend(decode_notices(body).items)

    notices.publish(send)
    return out


def test_owners_hear_their_closed_tasks_with_output_or_error(tmp_path: Path) -> None:
    notices = Notices(Senders())
    book = book_with_tasks(tmp_path, notices)
    book.cancel("bobs", 4.0)
    sent = published(notices)
    assert sorted(sent) == ["alice", "bob"]
    ok, bad = sent["alice"]
    assert (ok.id, ok.state, ok.output, ok.error, ok.worker) == ("ok", "succeeded", {"n": 1}, None,
                                                                  "w1")  # fmt: skip
    assert (bad.id, bad.state, bad.error, bad.attempt) == ("bad", "dead", "boom", 1)
    assert [(n.id, n.state) for n in sent["bob"]] == [("bobs", "cancelled")]
    assert published(notices) == {}  # sent once


def test_status_answers_only_the_owner_or_an_admin(tmp_path: Path) -> None:
    notices = Notices(Senders(admins=frozenset({"boss"})))
    book = book_with_tasks(tmp_path, notices)
    published(notices)
    ids = ["ok", "bad", "open", "bobs", "nope", "ok"]
    for sender in ("alice", "bob", "boss"):
        notices.answer(Status(ids, "r1"), sender, book, book.ledger)
    sent = published(notices)
    states = {user: [(n.id, n.state) for n in items] for user, items in sent.items()}
    assert states["alice"] == [
        ("ok", "succeeded"), ("bad", "dead"), ("open", "pending"), ("bobs", "unknown"),
        ("nope", "unknown"),
    ]  # fmt: skip
    assert states["bob"] == [(i, "unknown") for i in ("ok", "bad", "open")] + [
        ("bobs", "pending"),
        ("nope", "unknown"),
    ]
    assert [s for _, s in states["boss"]][:4] == ["succeeded", "dead", "pending", "pending"]
    assert all(n.ref == "r1" for items in sent.values() for n in items)
    assert sent["alice"][0].output == {"n": 1} and sent["alice"][1].error == "boom"
    assert sent["bob"][0].output is None  # nothing of hers reaches him


def test_a_refused_submit_is_told_to_its_sender_only_if_it_names_an_id() -> None:
    notices = Notices(Senders())
    notices.refused("alice", encode(TaskRequest("t1", "teleport")), "unknown task type")
    notices.refused("alice", b'{"v":1,"kind":"cancel","id":"t2"}', "not yours")
    notices.refused("alice", b"{not json", "not valid JSON")
    notices.refused("alice", b'{"v":1,"id":"../x"}', "bad id")
    notices.refused(None, encode(TaskRequest("t3", "sleep")), "no user_id")
    sent = published(notices)
    assert [(n.id, n.state, n.error) for n in sent["alice"]] == [
        ("t1", "rejected", "unknown task type")
    ]
    assert list(sent) == ["alice"]


def test_notices_are_bounded_while_the_broker_is_away() -> None:
    notices = Notices(Senders(), limit=3)
    for n in range(5):
        notices.refused("alice", encode(TaskRequest(f"t{n}", "x")), "no")
    assert [n.id for n in published(notices)["alice"]] == ["t0", "t1", "t2"]


def test_status_and_notice_messages_are_checked() -> None:
    assert decode(encode(Status(["a", "b"], "r"))) == Status(["a", "b"], "r")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ids": []}, "'ids' must be"),
        ({"ids": ["a"] * (MAX_STATUS_IDS + 1)}, "'ids' must be"),
        ({"ids": ["a", "../b"]}, r"'ids'\[1\]"),
        ({"ids": ["a"], "ref": "no spaces"}, "'ref'"),
    ]
    for body, why in cases:
        with pytest.raises(MessageError, match=why):
            decode(orjson.dumps({"v": 1, "kind": "status", **body}))
    with pytest.raises(MessageError, match="'state' must be one of"):
        decode(orjson.dumps({"v": 1, "kind": "notice", "id": "a", "state": "exploded"}))
    notice = Notice("a", "dead", 2, "w1", 5.0, None, "boom", "r")
    assert decode(encode(notice)) == notice


def test_a_client_user_may_bind_and_name_only_its_own_inbox() -> None:
    role = identity.client_role("a")
    mine = broker.inbox_queue("a", "x1")
    others = [broker.inbox_queue("a.b", "x1"), "mm.inbox.a.b.c", "mm.inbox.ab.x", "mm.inbox.a."]
    others += [broker.EVENTS, broker.CONTROL, broker.REQUESTS, broker.RESULTS, "amq.default"]
    assert [q for q in [mine, *others] if re.search(role.configure, q)] == [mine]
    assert [q for q in [mine, *others] if re.search(role.read, q)] == [mine]
    assert re.search(role.read, broker.NOTICES)
    assert [q for q in [mine, *others] if re.search(role.write, q)] == [mine, broker.REQUESTS]
    ((exchange, write, read),) = role.topics
    assert exchange == broker.NOTICES and write == identity.NOTHING
    keys = ["a", "a.b", "b", "#", "a.#", "*", ""]
    assert [k for k in keys if re.search(read, k)] == ["a"]
    assert not any(re.search(read, k) for k in keys if k != "a")
    definitions = identity.definitions("v", [(role, "pw")])
    assert definitions["topic_permissions"] == [
        {"user": "a", "vhost": "v", "exchange": broker.NOTICES, "write": "^$", "read": "^(a)$"}
    ]


def test_a_large_flush_is_cut_into_messages_under_the_limit() -> None:
    notices = [Notice(f"t{n}", "succeeded", 1, "w1", 1.0, {"x": "y" * 1000}) for n in range(700)]
    notices.append(Notice("huge", "succeeded", 1, "w1", 1.0, {"x": "y" * 300_000}))
    parts = bodies(notices)
    assert all(len(b) <= MAX_MESSAGE_BYTES for b in parts[:-1]) and len(parts) >= 3
    taken = [n for b in parts for n in decode_notices(b).items]
    assert taken == notices  # all of them, in order; the huge one alone, still readable


def test_status_requests_are_bounded_per_sender(tmp_path: Path) -> None:
    notices = Notices(Senders())
    book = book_with_tasks(tmp_path, notices)
    published(notices)
    asked = 0
    with pytest.raises(MessageError, match="status refused: 'alice' asks about more than"):
        while asked <= 2 * notices_module.STATUS_BURST:
            notices.answer(Status(["open"] * MAX_STATUS_IDS), "alice", book, book.ledger)
            asked += MAX_STATUS_IDS
    assert asked >= notices_module.STATUS_BURST  # the burst, and what came back meanwhile
    notices.answer(Status(["bobs"]), "bob", book, book.ledger)  # a budget of its own
    assert [n.state for n in published(notices)["bob"]] == ["pending"]


class OneWorker:
    """The inventory: one live worker."""

    def snapshot(self) -> dict[str, LiveWorker]:
        return {"w1": LiveWorker(Advertised("w1", frozenset({"sleep"}), 2), "mm.worker.w1")}


def test_the_loop_tells_owners_over_its_transport(tmp_path: Path) -> None:
    """The whole loop on the in-memory transport: a closed task's notice goes to its owner
    after the commit, and a status request is answered to its sender only."""
    broker_ = MemoryBroker(FakeClock())
    scheduler = Scheduler(Config(state_dir=tmp_path), connector=broker_, clock=broker_.clock)
    try:
        scheduler.inventory = OneWorker()
        scheduler.lead(broker_(lambda: False))

        def steps_until(done: Callable[[], bool]) -> None:
            for _ in range(200):
                if done():
                    return
                scheduler.step()
            raise AssertionError("not done after 200 steps")

        def heard() -> dict[str, list[Notice]]:
            out: dict[str, list[Notice]] = {}
            for owner, body in broker_.notices:
                out.setdefault(owner, []).extend(decode_notices(body).items)
            return out

        broker_.send("mm.requests", encode(TaskRequest("t1", "sleep")), "alice")
        steps_until(lambda: broker_.dispatched() == ["t1"])
        result = TaskResult("t1", 1, "w1", "succeeded", 1.0, 2.0, {"slept": 0})
        broker_.send("mm.results", encode(result), "mm-worker-w1")
        steps_until(lambda: "alice" in heard())
        assert scheduler.ledger.get("t1").state == "succeeded"  # type: ignore[union-attr]
        (notice,) = heard()["alice"]
        assert (notice.id, notice.state, notice.output) == ("t1", "succeeded", {"slept": 0})
        broker_.send("mm.requests", encode(Status(["t1"], "r1")), "bob")
        steps_until(lambda: "bob" in heard())
        assert [(n.id, n.state, n.ref) for n in heard()["bob"]] == [("t1", "unknown", "r1")]
        assert len(heard()["alice"]) == 1  # nothing more to her
    finally:
        scheduler.drop()
        scheduler.ledger.close()
