"""The local Aurora server's API surface: createJob validation, content types, HTTP failures."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TJSONProtocol import TJSONProtocol
from thrift.transport.TTransport import TMemoryBuffer

from aurora.client import AuroraClient
from aurora.errors import AuroraTransportError
from aurora.gen.api import AuroraSchedulerManager
from aurora.gen.api.ttypes import (
    ExecutorConfig,
    Identity,
    JobConfiguration,
    JobKey,
    Resource,
    ResponseCode,
    TaskConfig,
)
from aurora.local import LocalAurora
from aurora.thermos import task_instance
from aurora.transport import THRIFT_BINARY, THRIFT_JSON, HttpTransport

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def aurora() -> Iterator[LocalAurora]:
    with LocalAurora(port=0) as server:
        yield server


def raw_client(url: str, binary: bool = False) -> AuroraSchedulerManager.Client:
    protocol, media = (TBinaryProtocol, THRIFT_BINARY) if binary else (TJSONProtocol, THRIFT_JSON)
    return AuroraSchedulerManager.Client(protocol(HttpTransport(url + "/api", media, 5.0)))


def job(name: str = "ok", **changes: Any) -> JobConfiguration:
    key = JobKey(role="www", environment="test", name=name)
    data = task_instance("www", "test", name, [("p", "true")], 0.1, 16, 16)
    task = TaskConfig(
        job=key,
        owner=Identity(user="u"),
        resources={Resource(numCpus=0.1), Resource(ramMb=16), Resource(diskMb=16)},
        executorConfig=ExecutorConfig(name="AuroraExecutor", data=data),
    )
    config = JobConfiguration(key=key, owner=Identity(user="u"), taskConfig=task, instanceCount=1)
    for field, value in changes.items():
        target = task if hasattr(task, field) and not hasattr(config, field) else config
        setattr(target, field, value)
    return config


INVALID = {
    "bad key characters": (job("has space"), "is invalid"),
    "zero instances": (job("zero", instanceCount=0), "Instance count must be positive"),
    "no executor": (job("noexec", executorConfig=None), "Configuration may not be null"),
    "unknown executor": (
        job("otherexec", executorConfig=ExecutorConfig(name="Other", data="{}")),
        "doesn't exist",
    ),
    "resource twice": (
        job("twice", resources={Resource(numCpus=1.0), Resource(numCpus=2.0), Resource(ramMb=1)}),
        "Multiple resource values",
    ),
    "no task config": (job("notask", taskConfig=None), "must have taskConfig"),
    "bad executor data": (
        job("baddata", executorConfig=ExecutorConfig(name="AuroraExecutor", data="{}")),
        "executor data",
    ),
}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_create_job_is_answered_invalid_request(
    aurora: LocalAurora, case: str, binary: bool
) -> None:
    config, message = INVALID[case]
    response = raw_client(aurora.url, binary).createJob(config)
    assert response.responseCode == ResponseCode.INVALID_REQUEST
    assert message in response.details[0].message
    assert response.serverInfo.clusterName == "local"


def test_duplicate_job_is_invalid_request(aurora: LocalAurora) -> None:
    client = raw_client(aurora.url)
    long_job = job("dup")
    long_job.taskConfig.executorConfig.data = task_instance(
        "www", "test", "dup", [("p", "sleep 60")], 0.1, 16, 16
    )
    assert client.createJob(long_job).responseCode == ResponseCode.OK
    response = client.createJob(long_job)
    assert response.responseCode == ResponseCode.INVALID_REQUEST
    assert response.details[0].message == "Job www/test/dup already exists"
    assert client.killTasks(long_job.key, None, None).responseCode == ResponseCode.OK


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None, url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("POST", "/api", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers.get("Content-Type", ""), response.read()
    finally:
        conn.close()


def encoded_call(protocol: Any) -> bytes:
    buffer = TMemoryBuffer()
    AuroraSchedulerManager.Client(protocol(buffer)).send_getJobs("nobody")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content_type", "accept", "answer_type"),
    [
        (THRIFT_BINARY, None, THRIFT_BINARY),
        (THRIFT_BINARY, THRIFT_JSON, THRIFT_JSON),
        (THRIFT_JSON, None, THRIFT_JSON),
        ("application/json", None, THRIFT_JSON),
        ("application/x-thrift", THRIFT_BINARY, THRIFT_BINARY),
    ],
)
def test_protocol_follows_content_type_and_accept(
    aurora: LocalAurora, content_type: str, accept: str | None, answer_type: str
) -> None:
    protocol = TBinaryProtocol if content_type == THRIFT_BINARY else TJSONProtocol
    headers = {"Content-Type": content_type} | ({"Accept": accept} if accept else {})
    status, answered, body = post(aurora.url, encoded_call(protocol), headers)
    assert status == 200 and answered == answer_type
    reader = TBinaryProtocol if answer_type == THRIFT_BINARY else TJSONProtocol
    client = AuroraSchedulerManager.Client(reader(TMemoryBuffer(body)))
    assert client.recv_getJobs().responseCode == ResponseCode.OK


def test_bad_requests_get_http_errors(aurora: LocalAurora) -> None:
    status, _, _ = post(aurora.url, b"hello", {"Content-Type": "text/plain"})
    assert status == 415
    status, _, body = post(aurora.url, b"not thrift", {"Content-Type": THRIFT_JSON})
    assert status == 400 and b"malformed" in body
    with pytest.raises(AuroraTransportError, match="HTTP 404"):
        AuroraClient(aurora.url + "/nowhere").jobs()


class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(307)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_redirect_to_the_leader_is_followed(
    aurora: LocalAurora, redirector: ThreadingHTTPServer
) -> None:
    _Redirect.target = aurora.url + "/api"
    host, port = redirector.server_address[:2]
    client = AuroraClient(f"http://{host!s}:{port}", protocol="binary")
    assert client.jobs("nobody") == []
    assert client._transport.url == aurora.url + "/api"  # the leader is remembered


def test_redirect_loop_is_bounded(redirector: ThreadingHTTPServer) -> None:
    host, port = redirector.server_address[:2]
    _Redirect.target = f"http://{host!s}:{port}/api"
    with pytest.raises(AuroraTransportError, match="more than 3 redirects"):
        AuroraClient(f"http://{host!s}:{port}").jobs()


def test_unreachable_and_silent_schedulers() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(AuroraTransportError, match="cannot reach"):
        AuroraClient(f"http://127.0.0.1:{port}").jobs()
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        with pytest.raises(AuroraTransportError, match="timed out"):
            AuroraClient(f"http://127.0.0.1:{port}", timeout=0.3).jobs()


def test_structs_are_hashable_by_value() -> None:
    a, b = job("same"), job("same")
    assert a == b and hash(a) == hash(b)
    assert len({a, b, job("other")}) == 2
    assert JobKey("r", "e", "n") in {JobKey("r", "e", "n")}


def test_command_line_server_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aurora.local", "--port", "0", "--sandbox-root", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ready at http://127.0.0.1:" in line
        url = line.split("ready at ")[1].split()[0]
        client = AuroraClient(url)
        key = client.create_job("www", "test", "cli", [("s", "echo $$ > pid; sleep 60")], 0.1, 8, 8)
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("*/pid")) or not next(tmp_path.glob("*/pid")).read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pid = int(next(tmp_path.glob("*/pid")).read_text())
        assert client.status(key)[0].status == "RUNNING"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "stopped" in proc.stdout.read()
        with pytest.raises(ProcessLookupError):  # shutdown killed the job's processes
            os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_executor_data_round_trips_the_aurora_client_format() -> None:
    data = json.loads(task_instance("r", "e", "n", [("a", "x"), ("b", "y")], 0.5, 2, 3))
    assert data["task"]["constraints"] == [{"order": ["a", "b"]}]
    assert data["task"]["resources"] == {"cpu": 0.5, "ram": 2 << 20, "disk": 3 << 20}
    assert [p["cmdline"] for p in data["task"]["processes"]] == ["x", "y"]
