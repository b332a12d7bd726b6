"""The HTTP API against the real system: a scheduler process with --http-port, real Serf
agents and worker processes, the real broker."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest

from matchmaker.api import ApiError
from matchmaker.api.auth import identify, load_tokens
from matchmaker.devtools.cluster import wait_until
from matchmaker.messages import TaskRequest
from tests.api_support import ApiCluster, api_cluster, write_tokens

pytestmark = pytest.mark.timeout(180)
__all__ = ["api_cluster"]


def sleep_task(task_id: str, seconds: float = 0.0, **fields: object) -> TaskRequest:
    return TaskRequest(task_id, "sleep", {"seconds": seconds}, **fields)  # type: ignore[arg-type]


def test_lists_shows_and_pages_real_tasks(api_cluster: ApiCluster) -> None:
    c = api_cluster.cluster
    c.start_worker("w1", ["sleep"], 2, {"site": "iu"})
    ids = c.submit(*[sleep_task(f"t-{i}", 0.01) for i in range(5)])
    c.wait_states(ids)
    wait_until(lambda: api_cluster.get("/v1/workers")["workers"], 10, "the worker listed")
    workers = api_cluster.get("/v1/workers")["workers"]
    assert [(w["name"], w["site"], w["slots"], w["status"]) for w in workers] == [
        ("w1", "iu", 2, "alive")
    ]
    page = api_cluster.get("/v1/tasks?state=succeeded&limit=3", "read")
    assert [t["id"] for t in page["tasks"]] == ["t-4", "t-3", "t-2"]
    rest = api_cluster.get(f"/v1/tasks?state=succeeded&cursor={page['next_cursor']}", "read")
    assert [t["id"] for t in rest["tasks"]] == ["t-1", "t-0"] and rest["next_cursor"] is None
    task = api_cluster.get("/v1/tasks/t-0", "read")
    assert task["state"] == "succeeded" and task["worker"] == "w1"
    assert task["output"] == {"slept": 0.01}
    assert [h["state"] for h in task["history"]][:2] == ["pending", "assigned"]
    assert task["history"][-1]["state"] == "succeeded"
    wait_until(lambda: api_cluster.get("/v1/stats")["counters"].get("succeeded") == 5, 10, "stats")
    by_state = lambda: api_cluster.get("/v1/stats")["tasks_by_state"]  # noqa: E731
    wait_until(lambda: by_state() == {"succeeded": 5}, 10, "the counts (cached 2 s)")
    rounds = api_cluster.get("/v1/rounds")
    assert sum(s["placed"] for s in rounds["samples"]) >= 1
    assert len(rounds["waits"]) == 5 and all(w["wait"] >= 0 for w in rounds["waits"])


def test_pending_task_says_why_and_api_submit_and_cancel_work(api_cluster: ApiCluster) -> None:
    c = api_cluster.cluster
    c.start_worker("w1", ["sleep"], 1, {"site": "iu"})
    wait_until(lambda: api_cluster.get("/v1/workers")["workers"], 10, "the worker listed")
    status, body, _ = api_cluster.call(
        "POST", "/v1/tasks", "submit", {"id": "far", "type": "sleep", "constraints": {"site": "x"}}
    )
    assert (status, body) == (202, {"id": "far", "state": "submitted"})
    c.wait_states(["far"], ("pending",))
    wait_until(lambda: "site" in api_cluster.get("/v1/tasks/far")["explanation"], 10, "why")
    reasons = api_cluster.get("/v1/rounds")["unplaced_by_reason"]
    assert reasons and reasons[0]["tasks"] == 1
    # the roles: no token 401, read 403, admin cancels it for real
    assert api_cluster.call("POST", "/v1/tasks/far/cancel", None)[0] == 401
    status, body, _ = api_cluster.call("POST", "/v1/tasks/far/cancel", "read")
    assert status == 403 and "read" in body["error"]
    assert api_cluster.call("POST", "/v1/tasks/far/cancel", "admin")[0] == 202
    c.wait_states(["far"], ("cancelled",))
    status, body, _ = api_cluster.call("POST", "/v1/tasks/far/cancel", "admin")
    assert status == 409 and "cancelled" in body["error"]


def test_bad_input_gets_one_sentence(api_cluster: ApiCluster) -> None:
    cases = [
        ("GET", "/v1/tasks?colour=red", 400, "unknown query parameter"),
        ("GET", "/v1/tasks?state=lost", 400, "state must be"),
        ("GET", "/v1/tasks?limit=-1", 400, "limit"),
        ("GET", "/v1/tasks?since=nan", 400, "since"),
        ("GET", "/v1/tasks?cursor=abc", 400, "cursor"),
        ("GET", "/v1/tasks?type=a%20b", 400, "type"),
        ("GET", "/v1/tasks/nope", 404, "no task"),
        ("GET", "/v1/tasks/a%20b", 400, "task id"),
        ("GET", "/v1/nothing", 404, "no such path"),
        ("DELETE", "/v1/tasks", 405, "not allowed"),
        ("POST", "/v1/workers/ghost/drain", 404, "no live worker"),
    ]
    for method, path, code, text in cases:
        status, body, _ = api_cluster.call(method, path)
        assert status == code and text in body["error"], (path, status, body)
        assert body["error"].count(".") <= 2 and "\n" not in body["error"]
    status, body, _ = api_cluster.call(
        "POST", "/v1/tasks", "submit", {"type": "sleep", "id": "a b"}
    )
    assert status == 400 and "'id'" in body["error"]
    status, body, _ = api_cluster.call("POST", "/v1/tasks", "submit", ["not", "an", "object"])
    assert status == 400 and "JSON object" in body["error"]
    assert api_cluster.get("/v1/tasks?limit=100000")["tasks"] == []  # clamped, not refused
    bad = {"Authorization": "Bearer " + "x" * 32}
    request = urllib.request.Request(api_cluster.url + "/v1/stats", headers=bad)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 401


def test_drain_and_retry_are_published(api_cluster: ApiCluster) -> None:
    c = api_cluster.cluster
    c.start_worker("w1", ["sleep"], 1)
    wait_until(lambda: api_cluster.get("/v1/workers")["workers"], 10, "the worker listed")
    assert api_cluster.call("POST", "/v1/workers/w1/drain", "submit")[0] == 403
    for bad, text in (({"deadline": "soon"}, "number"), ({"on": False, "deadline": 5}, "only")):
        status, body, _ = api_cluster.call("POST", "/v1/workers/w1/drain", "admin", bad)
        assert status == 400 and text in body["error"], body
    status, body, _ = api_cluster.call("POST", "/v1/workers/w1/drain", "admin", {"deadline": 600})
    assert status == 202 and body == {"worker": "w1", "state": "drain requested", "deadline": 600.0}

    def drained() -> bool:
        return api_cluster.get("/v1/workers")["workers"][0]["status"] == "drained"

    wait_until(drained, 10, "the worker drained")
    assert 500 < api_cluster.get("/v1/workers")["workers"][0]["drain_deadline"] <= 600
    status, body, _ = api_cluster.call("POST", "/v1/workers/w1/drain", "admin", {"on": False})
    assert status == 202
    wait_until(lambda: not drained(), 10, "the worker back in service")
    c.wait_states(c.submit(sleep_task("ok", 0)))
    status, body, _ = api_cluster.call("POST", "/v1/tasks/ok/retry", "admin")
    assert status == 409 and "succeeded" in body["error"]
    c.submit(TaskRequest("bad", "sleep", {"fail": True}, max_attempts=1))

    def state(task_id: str) -> tuple[str, int]:
        task = api_cluster.get(f"/v1/tasks/{task_id}")
        return task["state"], task["attempt"]

    wait_until(lambda: state("bad") == ("dead", 1), 30, "the failing task dead")
    assert api_cluster.call("POST", "/v1/tasks/bad/retry", "admin")[0] == 202
    wait_until(lambda: state("bad") == ("dead", 2), 30, "the retried task run again, and dead")


def test_openapi_document_and_events(api_cluster: ApiCluster) -> None:
    status, doc, _ = api_cluster.call("GET", "/openapi.json", None)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/tasks", "/v1/tasks/{task_id}/cancel", "/v1/events", "/v1/rounds"} <= set(
        doc["paths"]
    )
    host, port = api_cluster.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        token = api_cluster.tokens["read"]
        s.sendall(
            f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        seen = b""
        while b"\n\n" not in seen.partition(b"event: snapshot\ndata: ")[2]:
            seen += s.recv(65536)
    data = json.loads(seen.split(b"event: snapshot\ndata: ", 1)[1].split(b"\n\n", 1)[0])
    assert {"pending", "in_flight", "workers", "counters"} <= set(data)


def test_standby_redirects_to_the_leader(api_cluster: ApiCluster, tmp_path: Path) -> None:
    """(tests/integration/test_api_standby.py follows a takeover too.)"""
    from membership.agent import free_port

    c = api_cluster.cluster
    port = free_port()
    c.scheduler_args = ("--http-port", str(port))
    c.start_scheduler(standby=True, wait=False)
    standby = ApiCluster(c, f"http://127.0.0.1:{port}", {})
    wait_until(lambda: standby.call("GET", "/v1/stats", None)[0] != 0, 20, "the standby's API")
    status, body, headers = standby.call("GET", "/v1/stats", None)
    assert status == 307, body
    assert headers["location"] == api_cluster.url + "/v1/stats"


def test_tokens_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    tokens = write_tokens(path)
    loaded = load_tokens(path)
    assert identify(f"Bearer {tokens['submit']}", loaded).role == "submit"  # type: ignore[union-attr]
    assert identify("Bearer nope", loaded) is None and identify(None, loaded) is None
    os.chmod(path, 0o644)
    with pytest.raises(ApiError, match="0600"):
        load_tokens(path)
    path.write_text("short read me\n")
    os.chmod(path, 0o600)
    with pytest.raises(ApiError, match="at least"):
        load_tokens(path)
    path.write_text(f"{'a' * 20} root me\n")
    with pytest.raises(ApiError, match="role"):
        load_tokens(path)


def test_without_tokens_only_local_reads(broker_url: str, tmp_path: Path) -> None:
    from matchmaker.devtools.cluster import LocalCluster
    from membership.agent import free_port

    port = free_port()
    c = LocalCluster(broker_url, tmp_path / "c", scheduler_args=("--http-port", str(port)))
    try:
        c.start_scheduler()
        api = ApiCluster(c, f"http://127.0.0.1:{port}", {})
        wait_until(lambda: api.call("GET", "/v1/stats", None)[0] == 200, 20, "the API answering")
        c.submit(sleep_task("mine", 0, constraints={"site": "nowhere"}))
        c.wait_states(["mine"], ("pending",))
        status, body, _ = api.call("POST", "/v1/tasks/mine/cancel", None)
        assert status == 403 and "read" in body["error"]
        rebound = urllib.request.Request(api.url + "/v1/stats", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(rebound, timeout=5)
        assert caught.value.code == 403
    finally:
        c.stop()


def test_a_busy_port_is_one_sentence(tmp_path: Path) -> None:
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = [sys.executable, "-m", "matchmaker", "run", "--insecure", "--http-port", str(port)]
        result = subprocess.run(
            [*run, "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last == f"matchmaker: the HTTP API cannot listen on 127.0.0.1:{port} (is the port in use?)"
    )
    assert "Traceback" not in result.stderr
