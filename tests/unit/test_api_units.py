"""Pure logic of the API: the new control messages, the snapshot board, the config keys."""

from __future__ import annotations

import orjson
import pytest

from matchmaker.api.control import encode_drain, encode_retry
from matchmaker.api.snapshot import Board, Snapshot
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
