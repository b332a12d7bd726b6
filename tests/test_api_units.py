"""Pure logic of the API: the new control messages, the snapshot board, the config keys."""

from __future__ import annotations

import orjson
import pytest

from matchmaker.api.control import decode_retry, encode_drain, encode_retry
from matchmaker.api.snapshot import Board, Snapshot
from matchmaker.config import ConfigError, load
from matchmaker.messages import Drain, MessageError, decode


def test_retry_round_trips_and_refuses_bad_ids() -> None:
    body = orjson.loads(encode_retry("exp-1"))
    assert body == {"v": 1, "kind": "retry", "id": "exp-1"}
    assert decode_retry(body).id == "exp-1"
    with pytest.raises(MessageError, match="'id'"):
        decode_retry({"v": 1, "kind": "retry", "id": "../x"})


def test_drain_with_deadline_is_still_a_drain_to_the_current_loop() -> None:
    message = decode(encode_drain("w1", True, 1e9), expect=("drain",))
    assert message == Drain("w1", True)
    assert orjson.loads(encode_drain("w1", True, 1e9))["deadline"] == 1e9
    with pytest.raises(MessageError):
        encode_drain("w1", True, float("inf"))


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
