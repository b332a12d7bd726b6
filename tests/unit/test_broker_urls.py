"""Broker URL lists (a cluster's nodes), the queue type in Config, and the worker's
Serf flags for several hosts: parsing and validation (pure logic); how long ``connect``
keeps trying a closed loopback port (no broker)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from matchmaker.config import ConfigError, load
from matchmaker.identity import resolve_url
from matchmaker.wire import broker
from membership.agent import free_port
from workers.__main__ import config_from, parser
from workers.config import parse_advertise

A = "amqp://u:p@10.0.0.1:5672/v"
B = "amqps://u:p@node-2.example:5671/v"


def test_a_list_splits_on_commas_before_a_scheme_only() -> None:
    assert broker.split_urls(f" {A} , {B},") == [A, B]
    odd = "amqp://u:p,q@h:1/v"  # a comma in a password stays in its URL
    assert broker.split_urls(f"{odd},{A}") == [odd, A]
    assert broker.split_urls(A) == [A]
    assert broker.split_urls(" ") == []


def test_describe_and_sender_of_a_list() -> None:
    assert broker.describe(f"{A},{B}") == "10.0.0.1:5672/v, node-2.example:5671/v"
    assert "p@" not in broker.describe(f"{A},{B}")
    assert broker.sender(f"{A},{B}") == "u"


def test_a_password_file_fills_every_url_of_a_list(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    bare = "amqp://u@10.0.0.1:5672/v,amqp://u@10.0.0.2:5672/v"
    assert broker.split_urls(resolve_url(bare, secret)) == [
        "amqp://u:s3cret@10.0.0.1:5672/v",
        "amqp://u:s3cret@10.0.0.2:5672/v",
    ]


def test_config_takes_a_toml_list_and_checks_the_queue_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "mm.toml"
    file.write_text(f'broker_url = ["{A}", "{B}"]\nqueue_type = "quorum"\n')
    config = load(file)
    assert broker.split_urls(config.broker_url) == [A, B]
    assert config.queue_type == "quorum"
    monkeypatch.setenv("MM_QUEUE_TYPE", "qorum")
    with pytest.raises(ConfigError, match="queue_type must be classic or quorum, not 'qorum'"):
        load()
    monkeypatch.delenv("MM_QUEUE_TYPE")
    with pytest.raises(ConfigError, match="broker_url: no broker URL given"):
        load(flags={"broker_url": " "})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("amqp://guest@127.0.0.1:5672/%2F", "names the user 'guest' without a password"),
        ("amqp://u:secret@127.0.0.1:99999/", "Port out of range"),
        ("amqp://[::1", "Invalid IPv6 URL"),
        ("http://u:secret@host/", "must begin with amqp:// or amqps://"),
        ("127.0.0.1:5672", "must begin with amqp:// or amqps://"),
    ],
)
def test_an_unusable_url_is_one_sentence_without_its_password(url: str, why: str) -> None:
    with pytest.raises(broker.BrokerError, match=f"^the broker URL .* cannot be used: .*{why}"):
        broker.url_parameters(url)
    with pytest.raises(ConfigError, match=why) as refused:
        load(flags={"broker_url": url})
    assert "secret" not in str(refused.value)
    args = ["--name", "w1", "--caps", "sleep", "--no-serf", "--broker-url", url]
    with pytest.raises(ValueError, match=why):
        config_from(parser().parse_args(args))
    assert broker.describe(url) == "an unusable URL"


def test_a_user_without_password_is_fine_when_a_password_file_gives_it() -> None:
    assert broker.check_urls("amqp://u@h/v", password_given=True) == ["amqp://u@h/v"]
    assert broker.url_parameters(A).credentials.password == "p"


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(broker.BrokerError, match="must be classic or quorum"):
        broker.queue_type("stream")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("10.0.0.5", True),
        ("10.0.0.5:7946", True),
        ("fd00::5", True),
        ("[fd00::5]:7946", True),
        ("host.example", False),
        ("10.0.0.5:0", False),
        ("10.0.0.5:http", False),
        ("", False),
    ],
)
def test_advertise_must_be_an_address(text: str, ok: bool) -> None:
    if ok:
        assert parse_advertise(text) == text
    else:
        with pytest.raises(ValueError, match="must be an IP address"):
            parse_advertise(text)


def test_worker_serf_flags_for_several_hosts() -> None:
    args = parser().parse_args(
        ["--name", "w1", "--caps", "sleep", "--serf-profile", "lan",
         "--serf-advertise", "10.0.0.5:7946", "--serf-bind", "0.0.0.0:7946"]
    )  # fmt: skip
    serf = config_from(args).serf
    assert serf is not None and (serf.profile, serf.advertise) == ("lan", "10.0.0.5:7946")
    with pytest.raises(SystemExit):
        parser().parse_args(["--name", "w1", "--caps", "sleep", "--serf-profile", "fast"])


@pytest.mark.parametrize("perf", ["nan", "inf", "0", "100"])
def test_a_worker_perf_outside_the_speed_range_is_refused(perf: str) -> None:
    args = parser().parse_args(["--name", "w1", "--caps", "sleep", "--no-serf", "--perf", perf])
    with pytest.raises(ValueError, match="perf must be a number from 1/64 to 64"):
        config_from(args)


def test_connect_keeps_trying_an_unreachable_broker_within_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"amqp://u:p@127.0.0.1:{free_port()}/v"
    started = time.monotonic()
    gave_up = r"at 127\.0\.0\.1:\d+/v \(tried for 1s\): "
    with (
        caplog.at_level(logging.WARNING, logger=broker.log.name),
        pytest.raises(broker.BrokerError, match=gave_up),
    ):
        broker.connect(url, attempts=None, within=1.0)
    assert time.monotonic() - started >= 1.0  # it did not give up before its bound
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) >= 2
    with pytest.raises(broker.BrokerError, match=r"cannot reach the broker at [^(]*: "):
        broker.connect(url, attempts=None, within=0)  # once, and said without a bound
    with pytest.raises(broker.BrokerError, match="stopped while connecting"):
        broker.connect(url, attempts=None, stopping=lambda: True)


def test_the_worker_s_broker_wait_is_checked() -> None:
    base = ["--name", "w1", "--caps", "sleep", "--no-serf"]
    assert config_from(parser().parse_args(base)).broker_wait == 60.0
    assert config_from(parser().parse_args([*base, "--broker-wait", "0"])).broker_wait == 0.0
    for bad in ("-1", "nan", "1e9"):
        with pytest.raises(ValueError, match="broker wait must be from 0 to 86400 seconds"):
            config_from(parser().parse_args([*base, "--broker-wait", bad]))
