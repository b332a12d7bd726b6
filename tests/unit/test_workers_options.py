"""The worker's options for what its tasks may reach: --stage-root and --allow-net."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from workers.__main__ import config_from, parser
from workers.config import WorkerConfig


def config(*args: str) -> WorkerConfig:
    return config_from(parser().parse_args(["--name", "w1", "--caps", "data_staging", *args]))


def test_defaults_allow_no_local_file_and_no_private_network() -> None:
    c = config()
    assert c.stage_roots == () and c.allow_net == ()


def test_roots_and_networks_are_repeatable(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    c = config(
        "--stage-root", str(tmp_path / "a"), "--stage-root", str(tmp_path / "b"),
        "--allow-net", "127.0.0.1/32", "--allow-net", "10.1.2.3/8", "--allow-net", "fd00::1",
    )  # fmt: skip
    assert c.stage_roots == (tmp_path / "a", tmp_path / "b")
    assert c.allow_net == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::1/128"),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow-net", "localhost"], "network 'localhost' must be an address or CIDR"),
        (["--allow-net", "10.0.0.0/33"], "must be an address or CIDR"),
        (["--stage-root", "/nonexistent/data"], "must be an existing absolute directory"),
    ],
)
def test_bad_values_are_one_sentence(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(*args)


def test_a_stage_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="existing absolute directory"):
        config("--stage-root", str(tmp_path / "f"))
