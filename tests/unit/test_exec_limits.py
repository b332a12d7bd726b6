"""The exec driver's ``[limits]``: what a worker file may say, and the prlimit line it gives."""

from __future__ import annotations

import os
import re
import resource

import pytest

from workers.tasks.execute import PRLIMIT, check_limits, limited


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4096, 4096), ("4096", 4096), ("512M", 512 << 20), ("2G", 2 << 30), ("2GiB", 2 << 30),
     (" 3 kb ", 3 << 10), ("1T", 1 << 40)],
)  # fmt: skip
def test_byte_limits_take_a_number_or_a_size(value: object, expected: int) -> None:
    assert check_limits({"memory": value}) == {"memory": expected}


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"memory": "2 gallons"}, "limit 'memory' must be bytes"),
        ({"memory": 0}, "from 1 to 2**62"),
        ({"file_size": 1 << 63}, "from 1 to 2**62"),
        ({"cpu": True}, "limit 'cpu' must be a whole number"),
        ({"cpu": 1.5}, "limit 'cpu' must be a whole number"),
        ({"files": "64"}, "limit 'files' must be a whole number"),
        ({"nproc": 10}, "unknown limit(s) nproc"),
    ],
)
def test_a_bad_limit_is_one_sentence(limits: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_limits(limits)


def test_no_limits_leave_the_command_as_it_is() -> None:
    assert check_limits({}) == {}
    assert limited(["/bin/true"], {}) == ["/bin/true"]


def test_limits_wrap_the_command_in_prlimit() -> None:
    argv = limited(["/bin/echo", "--as=1"], {"memory": 1 << 30, "cpu": 60, "files": 64})
    assert argv == [
        PRLIMIT, "--cpu=60", "--nofile=64", f"--as={1 << 30}", "--", "/bin/echo", "--as=1",
    ]  # fmt: skip


def test_a_limit_above_the_workers_own_hard_limit_is_refused_unless_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert check_limits({"files": 4096}) == {"files": 4096}
    with pytest.raises(ValueError, match="limit 'files' 4097 is above this worker's own hard"):
        check_limits({"files": 4097})
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # root may raise its hard limits
    assert check_limits({"files": 4097}) == {"files": 4097}
