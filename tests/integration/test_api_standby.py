"""A standby scheduler's API redirects to the active one's: two real scheduler processes
on one Serf pool and one broker, each with its own HTTP port."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from matchmaker.api.leader import TAG, Advert, parse
from matchmaker.devtools.cluster import LocalCluster, wait_until
from membership.agent import free_port
from membership.rpc import Member
from tests.api_support import ApiCluster, write_tokens

pytestmark = pytest.mark.timeout(180)


def test_a_standby_redirects_to_the_leader_and_serves_once_it_leads(
    broker_url: str, tmp_path: Path
) -> None:
    tokens_file = tmp_path / "tokens"
    tokens = write_tokens(tokens_file)
    first, second = free_port(), free_port()
    c = LocalCluster(broker_url=broker_url, workdir=tmp_path / "cluster")
    try:
        c.scheduler_args = ("--http-port", str(first), "--api-tokens-file", str(tokens_file))
        c.start_scheduler()
        leader = ApiCluster(c, f"http://127.0.0.1:{first}", tokens)
        wait_until(lambda: leader.call("GET", "/v1/stats")[0] == 200, 20, "the leader's API")
        c.scheduler_args = ("--http-port", str(second), "--api-tokens-file", str(tokens_file))
        c.start_scheduler(standby=True, wait=False)
        assert c.standby is not None
        c.wait_log(c.standby, "standing by", 30)
        standby = ApiCluster(c, f"http://127.0.0.1:{second}", tokens)
        wait_until(lambda: standby.call("GET", "/v1/stats")[0] != 0, 20, "the standby's API")

        status, body, headers = standby.call("GET", "/v1/tasks?state=pending&limit=5", "read")
        assert status == 307, body
        assert headers["location"] == f"http://127.0.0.1:{first}/v1/tasks?state=pending&limit=5"
        assert f"127.0.0.1:{first}" in body["error"]
        status, _, headers = standby.call("POST", "/v1/tasks", "submit", {"type": "sleep"})
        assert status == 307 and headers["location"] == f"http://127.0.0.1:{first}/v1/tasks"
        assert standby.call("GET", "/v1/stats", None)[0] == 401  # tokens still count first

        assert c.scheduler is not None
        c.scheduler.stop()  # the leader goes: the standby takes over and serves
        c.wait_log(c.standby, "this scheduler is active", 30)
        wait_until(lambda: standby.call("GET", "/v1/stats")[0] == 200, 20, "the new leader")
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{first}/v1/stats", timeout=2)
    finally:
        c.stop()


def member(tag: str | None, addr: str = "10.0.0.7:7946") -> Member:
    tags = {"role": "scheduler"} | ({TAG: tag} if tag is not None else {})
    return Member("s1", addr, 7946, tags, "alive")


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("127.0.0.1:8080@1700000000.5", Advert("127.0.0.1:8080", 1700000000.5)),
        ("0.0.0.0:8080@1", Advert("10.0.0.7:8080", 1.0)),  # a wildcard: the member's address
        ("[::1]:8080@2", Advert("[::1]:8080", 2.0)),
        ("evil.example:8080@1", None),  # names are not followed
        ("127.0.0.1:99999@1", None),
        ("127.0.0.1:8080", None),
        ("127.0.0.1:8080@nan", None),
        ("", None),
        (None, None),
    ],
)
def test_an_advert_parses_strictly(tag: str | None, expected: Advert | None) -> None:
    assert parse(member(tag)) == expected
