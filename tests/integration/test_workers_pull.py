"""Pull-mode worker (the old design): competing consumers on ``mm.pull.<type>``."""

from __future__ import annotations

import signal

import pytest

from matchmaker.messages import TaskRequest, encode
from matchmaker.wire.broker import pull_queue
from tests.workers_support import Client, client, spawn, wait_for  # noqa: F401

pytestmark = pytest.mark.broker


def submit(client: Client, task_id: str, **fields: object) -> None:  # noqa: F811
    request = TaskRequest(id=task_id, type="sleep", **fields)  # type: ignore[arg-type]
    client.publish(pull_queue("sleep"), encode(request))


def test_pull_worker_runs_requests_from_its_type_queue(spawn, client: Client) -> None:  # noqa: F811
    spawn("--name", "p1", "--caps", "sleep", "--slots", "2", "--mode", "pull")
    submit(client, "a", payload={"seconds": 0.2})
    submit(client, "b", payload={"fail": True})
    client.publish(pull_queue("sleep"), b'{"v": 1, "kind": "submit", "id": "c"}')
    a, b = client.final("a"), client.final("b")
    assert (a.state, a.worker, a.attempt, a.output) == ("succeeded", "p1", 1, {"slept": 0.2})
    assert b.state == "failed" and b.error == "sleep: failed on request"
    headers, _ = client.dead()
    assert "'type'" in headers["x-mm-reason"]
    wait_for(lambda: client.depth(pull_queue("sleep")) == 0, what="the pull queue to empty")


def test_unmet_constraint_is_requeued_until_a_matching_worker_runs_it(
    spawn,  # noqa: F811
    client: Client,  # noqa: F811
) -> None:
    iu = spawn("--name", "p-iu", "--caps", "sleep", "--mode", "pull", "--attr", "site=iu")
    submit(client, "picky", payload={"seconds": 0}, constraints={"site": "tacc", "gpu": {">=": 1}})
    wait_for(lambda: "task requeued id=picky" in iu.text(), what="p-iu to requeue the task")
    assert "constraint not met: gpu>=1, site=tacc" in iu.text()
    assert client.of("picky") == []
    spawn("--name", "p-tacc", "--caps", "sleep", "--mode", "pull", "--attr", "site=tacc")
    spawn(
        "--name",
        "p-ok",
        "--caps",
        "sleep",
        "--mode",
        "pull",
        "--attr",
        "site=tacc",
        "--attr",
        "gpu=2",
    )
    picky = client.final("picky", timeout=20)
    assert (picky.state, picky.worker) == ("succeeded", "p-ok")
    assert {r.worker for r in client.of("picky")} == {"p-ok"}  # never run by p-iu nor p-tacc


def test_a_refused_request_goes_behind_the_others(spawn, client: Client) -> None:  # noqa: F811
    """Handed back to the end of its queue: with one slot, a request the worker must refuse
    does not keep it from the one behind (a nack would put it back at the head)."""
    worker = spawn("--name", "p1", "--caps", "sleep", "--slots", "1", "--mode", "pull")
    submit(client, "picky", payload={"seconds": 0}, constraints={"gpu": {">=": 1}})
    submit(client, "easy", payload={"seconds": 0})
    assert client.final("easy", timeout=20).state == "succeeded"
    wait_for(lambda: "task requeued id=picky" in worker.text(), what="p1 to refuse picky")
    assert client.of("picky") == []
    assert client.depth(pull_queue("sleep")) <= 1  # picky, when not held by p1


def test_drain_requeues_what_has_not_started(spawn, client: Client) -> None:  # noqa: F811
    worker = spawn("--name", "p1", "--caps", "sleep,env_setup", "--mode", "pull", "--grace", "20")
    submit(client, "busy", payload={"seconds": 1.0})
    client.running("busy")
    setup = TaskRequest(id="queued", type="env_setup", payload={"directory": "x"})
    client.publish(pull_queue("env_setup"), encode(setup))
    # one slot, busy: the env_setup request is prefetched by its consumer but cannot start
    wait_for(lambda: client.depth(pull_queue("env_setup")) == 0, what="the request to be held")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert client.final("busy", timeout=1).state == "succeeded"
    assert client.depth(pull_queue("env_setup")) == 1  # handed back, not run
    assert client.of("queued") == []
    assert "requeued_unstarted=1" in worker.text()
