"""Wire messages: round trips and the sentence each bad input gets."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchmaker.ledger import Ledger
from matchmaker.messages import (
    MAX_MESSAGE_BYTES,
    Cancel,
    Drain,
    MessageError,
    TaskDispatch,
    TaskRequest,
    TaskResult,
    decode,
    decode_dispatches,
    decode_results,
    encode,
    encode_batch,
    pack,
)


def raw(**body: object) -> bytes:
    return json.dumps({"v": 1, **body}).encode()


def test_round_trips() -> None:
    for message in (
        TaskRequest("t1", "sleep", {"seconds": 1}, 5, {"site": "iu"}, {"gpu": [1, 2]}, 2, 9.5),
        Cancel("t1"),
        Drain("w1", on=False),
        TaskDispatch("t1", 2, "sleep", {}, 1e9),
        TaskResult("t1", 1, "w1", "failed", 1.0, 2.0, None, "boom"),
        TaskResult("t1", 1, "w1", "running", 1.0, received_at=0.5),
    ):
        assert decode(encode(message)) == message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"v": 2, "id": "a", "type": "sleep"}).encode(), "version"),
        (raw(id="", type="sleep"), "'id'"),
        (raw(id="a b", type="sleep"), "'id'"),
        (raw(id="a", type="sleep", priority=10), "'priority'"),
        (raw(id="a", type="sleep", priority=True), "'priority'"),
        (raw(id="a", type="sleep", payload=[1]), "'payload'"),
        (raw(id="a", type="sleep", constraints={"gpu": {"~": 1}}), "unknown operator"),
        (raw(id="a", type="sleep", timeout=0), "'timeout'"),
        (raw(id="a", type="sleep", max_attempts=0), "'max_attempts'"),
        (raw(kind="result", id="a", attempt=1, worker="w", state="done"), "'state'"),
        (
            raw(kind="result", id="a", attempt=1, worker="w", state="running", received_at="x"),
            "'received_at'",
        ),
        (raw(kind="explode", id="a"), "unexpected message kind"),
        (raw(kind="results", results=[]), "non-empty JSON array"),
        (raw(kind="results", results={"id": "a"}), "non-empty JSON array"),
    ],
)
def test_bad_messages_get_a_reason(body: bytes, fragment: str) -> None:
    with pytest.raises(MessageError, match=fragment):
        decode(body)


def test_a_results_batch_takes_its_valid_items_and_refuses_each_invalid_one() -> None:
    done = TaskResult("a", 1, "w1", "succeeded", 1.0, 2.0, {"n": 1})
    running = TaskResult("b", 2, "w1", "running", 1.5)
    bad = {"id": "c", "attempt": 1, "worker": "w1", "state": "exploded"}
    body = encode_batch("results", [encode(done), json.dumps(bad).encode(), encode(running), b"7"])
    batch = decode_results(body)
    assert batch.items == (done, running)
    (first, why_first), (second, why_second) = batch.invalid
    assert why_first.startswith("results[1]: 'state'") and why_second.startswith("results[3]:")
    assert json.loads(first) == {"v": 1, "kind": "result", **bad}  # a message of its own
    with pytest.raises(MessageError, match="'state'"):
        decode(first)
    assert second == b"7"
    assert decode_results(encode(done)).items == (done,)  # a single result is a batch of one


def test_dispatches_pack_in_order_within_the_limit_and_a_lone_one_goes_as_itself() -> None:
    dispatches = [TaskDispatch(f"t{i}", 1, "sleep", {"x": "y" * 200}, 1e9) for i in range(7)]
    encoded = [encode(d) for d in dispatches]
    packed = pack("dispatches", dispatches, encoded, limit=3 * len(encoded[0]) + 60)
    assert [len(group) for group, _ in packed] == [3, 3, 1]
    assert [d for group, _ in packed for d in group] == dispatches
    assert all(len(body) <= 3 * len(encoded[0]) + 60 for _, body in packed)
    assert packed[-1][1] == encoded[-1]  # alone: the dispatch message itself
    decoded = [d for _, body in packed for d in decode_dispatches(body).items]
    assert decoded == dispatches
    assert pack("dispatches", [], []) == []
    bad = decode_dispatches(encode_batch("dispatches", [encoded[0], b'{"id": "z"}']))
    assert bad.items == (dispatches[0],)
    assert bad.invalid[0][1].startswith("dispatches[1]: ")
    with pytest.raises(MessageError, match="unexpected message kind 'results'"):
        decode_dispatches(encode_batch("results", [encoded[0]]))


def test_oversize_is_refused_before_parsing() -> None:
    body = raw(id="a", type="sleep", payload={"x": "y" * MAX_MESSAGE_BYTES})
    with pytest.raises(MessageError, match="over the"):
        decode(body)


def test_expect_limits_kinds() -> None:
    with pytest.raises(MessageError, match="unexpected message kind 'cancel'"):
        decode(encode(Cancel("t")), expect=("result",))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode(data)


def nested(levels: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * levels + leaf + b"}" * levels


@pytest.mark.parametrize(
    "body",
    [
        b'{"v":1,"kind":"submit","id":' + b"[" * 1000 + b"1" + b"]" * 1000 + b',"type":"sleep"}',
        b'{"v":1,"kind":"submit","id":"a","type":"sleep","payload":' + nested(300) + b"}",
        b'{"v":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"v":1,"kind":' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"v":1,"kind":"result","id":"a","attempt":1,"worker":"w","state":"succeeded","output":'
        + nested(300)
        + b"}",
    ],
)
def test_deep_nesting_is_refused_with_a_bounded_sentence(body: bytes) -> None:
    with pytest.raises(MessageError, match="more than 32 levels deep") as error:
        decode(body)
    assert len(str(error.value)) < 200


def test_what_is_accepted_can_be_written_again() -> None:
    deepest = b'{"v":1,"kind":"submit","id":"a","type":"sleep","payload":' + nested(31) + b"}"
    request = decode(deepest)
    assert isinstance(request, TaskRequest)
    dispatch = TaskDispatch("a", 1, "sleep", request.payload, 1e9)
    assert decode_dispatches(encode_batch("dispatches", [encode(dispatch)])).items == (dispatch,)
    with pytest.raises(MessageError, match="32 levels"):
        decode(b'{"v":1,"kind":"submit","id":"a","type":"sleep","payload":' + nested(32) + b"}")


def test_a_deep_item_of_a_batch_is_refused_alone() -> None:
    ok = encode(TaskResult("b", 1, "w", "succeeded", output={"n": 1}))
    deep = b'{"id":"a","attempt":1,"worker":"w","state":"succeeded","output":' + nested(300) + b"}"
    batch = decode_results(encode_batch("results", [deep, ok, b"[" * 900 + b"]" * 900]))
    assert [r.id for r in batch.items] == ["b"]
    (first, why_first), (third, why_third) = batch.invalid
    assert why_first == "results[0]: a result nests objects and arrays more than 32 levels deep"
    assert why_third.startswith("results[2]: a result must be a JSON object")
    assert len(first) < 200 and len(third) < 200  # described, not written out again


def test_bad_values_are_described_not_repeated() -> None:
    with pytest.raises(MessageError) as error:
        decode(raw(id="x" * 10_000, type="sleep"))
    assert len(str(error.value)) < 200 and "..." in str(error.value)
    with pytest.raises(MessageError, match="a JSON array of 3 items"):
        decode(raw(id=[1, 2, 3], type="sleep"))


def json_values(max_leaves: int = 60) -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    return st.recursive(
        scalars | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=max_leaves,
    )


@settings(max_examples=200, deadline=None)
@given(json_values(), st.integers(0, 40))
def test_whatever_is_accepted_can_be_stored_and_dispatched(value: object, wrap: int) -> None:
    for _ in range(wrap):
        value = [value]
    body = orjson.dumps(
        {"v": 1, "kind": "submit", "id": "a", "type": "sleep", "payload": {"p": value}}
    )
    try:
        request = decode(body)
    except MessageError as error:
        assert len(str(error)) < 300
        return
    assert isinstance(request, TaskRequest)
    with tempfile.TemporaryDirectory() as directory:
        ledger = Ledger(Path(directory) / "ledger.sqlite")
        assert ledger.add([request], 1.0) == [request]
        ledger.commit()
        row = ledger.get("a")
        ledger.close()
    assert row is not None and row.payload == request.payload
    dispatch = TaskDispatch("a", 1, "sleep", request.payload, 1e9)
    batch = encode_batch("dispatches", [encode(dispatch), encode(dispatch)])
    assert decode_dispatches(batch).items == (dispatch, dispatch)
