"""The worker tag schema: encode/decode round trips, and strict rejection of hostile tags."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from membership.errors import TagError
from membership.tags import (
    MAX_SLOTS,
    SERF_TAG_LIMIT,
    decode_worker,
    encode_worker_tags,
    encoded_size,
)

GOOD = {"role": "worker", "caps": "data_staging,env_setup", "slots": "4"}


def test_example_from_the_design_decodes() -> None:
    info = decode_worker(
        "w7", {**GOOD, "q": "mm.worker.w7", "site": "iu", "gpu": "0", "speed": "1.5"}
    )
    assert info is not None
    assert info.queue == "mm.worker.w7"
    assert info.worker.name == "w7"
    assert info.worker.capabilities == {"data_staging", "env_setup"}
    assert info.worker.slots == 4 and info.worker.perf == 1.0
    assert info.worker.attributes == {"site": "iu", "gpu": 0, "speed": 1.5}
    assert info.notes == ()


def test_encode_produces_the_compact_schema() -> None:
    tags = encode_worker_tags("w7", ["env_setup", "data_staging"], 4, {"site": "iu", "gpu": 0})
    assert tags == {**GOOD, "q": "mm.worker.w7", "site": "iu", "gpu": "0"}


@pytest.mark.parametrize("tags", [{}, {"role": "scheduler"}, {"role": "Worker", "caps": "x"}])
def test_non_workers_are_not_workers(tags: dict[str, str]) -> None:
    assert decode_worker("sched", tags) is None


@pytest.mark.parametrize(
    ("name", "tags", "reason"),
    [
        ("w 1", GOOD, "member name"),
        ("w1\x1b[31m", GOOD, "member name"),
        ("w" * 65, GOOD, "member name"),
        ("w1", {**GOOD, "caps": ""}, "caps"),
        ("w1", {k: v for k, v in GOOD.items() if k != "caps"}, "caps"),
        ("w1", {**GOOD, "caps": "a,,b"}, "capability"),
        ("w1", {**GOOD, "caps": "a;rm -rf /"}, "capability"),
        ("w1", {**GOOD, "slots": "four"}, "slots"),
        ("w1", {**GOOD, "slots": "4.0"}, "slots"),
        ("w1", {**GOOD, "slots": ""}, "slots"),
        ("w1", {**GOOD, "slots": "9" * 40}, "slots"),
        ("w1", {k: v for k, v in GOOD.items() if k != "slots"}, "slots"),
        ("w1", {**GOOD, "q": "mm.requests"}, "queue"),
        ("w1", {**GOOD, "q": "mm.worker."}, "queue"),
        ("w1", {**GOOD, "q": "mm.worker.w7"}, "own queue"),
        ("w1", {**GOOD, "name": "w2"}, "reserved"),
        ("w1", {**GOOD, "running": "0"}, "reserved"),
        ("w1", {**GOOD, "bad key": "x"}, "tag key"),
        ("w1", {**GOOD, "site": "i u"}, "unsafe"),
        ("w1", {**GOOD, "site": ""}, "unsafe"),
        ("w1", {**GOOD, "site": "\udcff\udcfe"}, "unsafe"),
        ("w1", {**GOOD, "gpu": "1e999"}, "finite"),
        ("w1", {**GOOD, "gpu": "1" * 30}, "too large"),
    ],
)
def test_hostile_or_malformed_tags_are_rejected_with_a_reason(
    name: str, tags: dict[str, str], reason: str
) -> None:
    with pytest.raises(TagError, match=reason):
        decode_worker(name, tags)


@pytest.mark.parametrize(("text", "slots"), [("-3", 0), ("5000", MAX_SLOTS), ("0", 0)])
def test_absurd_slot_counts_are_clamped(text: str, slots: int) -> None:
    info = decode_worker("w1", {**GOOD, "slots": text})
    assert info is not None and info.worker.slots == slots
    assert bool(info.notes) == (text != "0")


def test_encode_refuses_tags_over_serfs_limit() -> None:
    attributes = {f"attr{i}": "v" * 100 for i in range(5)}
    with pytest.raises(TagError, match=r"over Serf's 512-byte limit"):
        encode_worker_tags("w1", ["sleep"], 1, attributes)


def test_encoded_size_counts_like_serf() -> None:
    # One marker byte, a fixmap header, then fixstr keys and values: 1 + 1 + (1+1) + (1+1).
    assert encoded_size({"a": "b"}) == 6
    # Strings of 32..255 bytes take a 3-byte header in the old msgpack format Serf writes.
    assert encoded_size({"a": "v" * 40}) == 1 + 1 + 2 + 3 + 40


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("w 1", ["sleep"], 1), "worker name"),
        (("w1", [], 1), "capability"),
        (("w1", ["a,b"], 1), "capability"),
        (("w1", ["sleep"], -1), "slots"),
        (("w1", ["sleep"], MAX_SLOTS + 1), "slots"),
        (("w1", ["sleep"], True), "slots"),
        (("w1", ["sleep"], 1, {"caps": "x"}), "schema"),
        (("w1", ["sleep"], 1, {"name": "x"}), "reserved"),
        (("w1", ["sleep"], 1, {"site": "a b"}), "unsafe"),
        (("w1", ["sleep"], 1, {"x": float("nan")}), "finite"),
        (("w1", ["sleep"], 1, {"x": [1]}), "string or a number"),
        (("w1", ["sleep"], 1, None, "mm.requests"), "queue"),
        (("w1", ["sleep"], 1, None, "mm.worker.w2"), "own queue"),
    ],
)
def test_encode_refuses_bad_input(args: tuple[Any, ...], reason: str) -> None:
    with pytest.raises(TagError, match=reason):
        encode_worker_tags(*args)


names = st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda k: k not in {"role", "q", "caps", "slots", "name", "running", "free", "status"}
)
text_values = st.from_regex(r"[A-Za-z_:/@][A-Za-z0-9_.:/@+-]{0,15}", fullmatch=True)
values = st.one_of(
    text_values,
    st.integers(-(10**17), 10**17),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
    st.booleans(),
)


@given(
    name=names,
    caps=st.sets(names, min_size=1, max_size=4),
    slots=st.integers(0, MAX_SLOTS),
    attributes=st.dictionaries(keys, values, max_size=4),
)
def test_encode_then_decode_round_trips(
    name: str, caps: set[str], slots: int, attributes: dict[str, object]
) -> None:
    try:
        tags = encode_worker_tags(name, caps, slots, attributes)
    except TagError as error:
        assert "512-byte limit" in str(error)
        return
    assert encoded_size(tags) <= SERF_TAG_LIMIT
    info = decode_worker(name, tags)
    assert info is not None
    assert info.worker.capabilities == caps
    assert info.worker.slots == slots
    expected = {k: int(v) if isinstance(v, bool) else v for k, v in attributes.items()}
    assert info.worker.attributes == expected
    assert info.queue == f"mm.worker.{name}"


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=8), st.text(max_size=70))
def test_decode_never_crashes_on_arbitrary_tags(tags: dict[str, str], name: str) -> None:
    tags = {**tags, "role": "worker"}
    try:
        info = decode_worker(name, tags)
    except TagError as error:
        assert str(error)
        return
    assert info is not None and 0 <= info.worker.slots <= MAX_SLOTS


def test_perf_is_advertised_parsed_and_clamped() -> None:
    from matchmaker.models import MAX_SPEED

    tags = encode_worker_tags("fast", ["sleep"], 2, perf=2.5)
    assert tags["perf"] == "2.5"
    assert "perf" not in encode_worker_tags("plain", ["sleep"], 2)  # 1 is the default
    info = decode_worker("fast", tags)
    assert info is not None and info.worker.perf == 2.5
    huge = decode_worker("fast", {**tags, "perf": "1e9"})
    assert huge is not None and huge.worker.perf == MAX_SPEED and "clamped" in huge.notes[0]
    for bad in ("fast!", "nan", "1,5"):
        with pytest.raises(TagError, match="perf"):
            decode_worker("fast", {**tags, "perf": bad})
    with pytest.raises(TagError, match="perf"):
        encode_worker_tags("zero", ["sleep"], 2, perf=0.0)
