"""Pure logic of the API: the new control messages, the snapshot board, the config keys."""

from __future__ import annotations

import orjson
import pytest

from matchmaker.api.control import encode_drain, encode_retry
from matchmaker.api.snapshot import Board, Snapshot
from matchmaker.api.store import cursor_of, parse_cursor
from matchmaker.config import ConfigError, load
from matchmaker.messages import Drain, MessageError, Retry, decode


def test_retry_and_drain_are_the_loop_s_own_messages() -> None:
    assert orjson.loads(encode_retry("exp-1")) == {"v": 1, "kind": "retry", "id": "exp-1"}
    assert decode(encode_retry("exp-1"), expect=("retry",)) == Retry("exp-1")
    with pytest.raises(MessageError, match="'id'"):
        decode(b'{"v": 1, "kind": "retry", "id": "../x"}', expect=("retry",))
    assert decode(encode_drain("w1", False), expect=("drain",)) == Drain("w1", False)


def snap(at: float, placed: int, rounds: int, spent: float) -> Snapshot:
    return Snapshot(at, (), 3, 1, 1, {"placements": placed}, rounds, spent)


def test_board_samples_intervals() -> None:
    board = Board()
    board.publish(snap(100.0, 10, 4, 0.004))
    assert board.due(100.1) is False and board.due(100.5) is True
    board.publish(snap(100.5, 30, 6, 0.010))
    (sample,) = board.history()
    assert (sample.placed, sample.rounds) == (20, 2)
    assert sample.round_ms == pytest.approx(3.0)
    assert board.latest is not None and board.latest.seq == 2


def test_http_config_keys() -> None:
    assert load(None, {"http_port": "8080"}).http_bind == "127.0.0.1"
    with pytest.raises(ConfigError, match="http_port"):
        load(None, {"http_port": 70000})
    with pytest.raises(ConfigError, match="api_tokens_file"):
        load(None, {"http_port": 8080, "http_bind": "0.0.0.0"})
    assert load(None, {"http_port": 8080, "http_bind": "::1"}).http_port == 8080


@pytest.mark.parametrize(
    ("at", "task_id"), [(0.0, "a"), (1733400000.123456, "exp-1:x@y.z"), (1e-300, "Z" * 128)]
)
def test_a_page_cursor_names_its_key_exactly(at: float, task_id: str) -> None:
    cursor = cursor_of(at, task_id)
    assert parse_cursor(cursor) == (at, task_id)
    assert cursor.replace("-", "").replace("_", "").isalnum()  # no escaping in a query string


@pytest.mark.parametrize("text", ["", "12", "abc", "W3RydWUsImEiXQ", "x" * 500])
def test_a_cursor_no_page_gave_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="next_cursor of a previous page"):
        parse_cursor(text)
