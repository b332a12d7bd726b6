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
from aurora.errors import AuroraError, AuroraTransportError
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
from aurora.transport import THRIFT_BINARY, THRIFT_JSON, HttpTransport, redirect_target

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def aurora() -> Iterator[LocalAurora]:
    with LocalAurora(port=0) as server:
        yield server


def raw_client(url: str, token: str, binary: bool = False) -> AuroraSchedulerManager.Client:
    protocol, media = (TBinaryProtocol, THRIFT_BINARY) if binary else (TJSONProtocol, THRIFT_JSON)
    transport = HttpTransport(url + "/api", media, 5.0, token=token)
    return AuroraSchedulerManager.Client(protocol(transport))


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
    response = raw_client(aurora.url, aurora.token, binary).createJob(config)
    assert response.responseCode == ResponseCode.INVALID_REQUEST
    assert message in response.details[0].message
    assert response.serverInfo.clusterName == "local"


def test_duplicate_job_is_invalid_request(aurora: LocalAurora) -> None:
    client = raw_client(aurora.url, aurora.token)
    long_job = job("dup")
    long_job.taskConfig.executorConfig.data = task_instance(
        "www", "test", "dup", [("p", "sleep 60")], 0.1, 16, 16
    )
    assert client.createJob(long_job).responseCode == ResponseCode.OK
    response = client.createJob(long_job)
    assert response.responseCode == ResponseCode.INVALID_REQUEST
    assert response.details[0].message == "Job www/test/dup already exists"
    assert client.killTasks(long_job.key, None, None).responseCode == ResponseCode.OK


def post(
    url: str, body: bytes, headers: dict[str, str], path: str = "/api"
) -> tuple[int, str, bytes]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None, url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers=headers)
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
    headers["Authorization"] = f"Bearer {aurora.token}"
    status, answered, body = post(aurora.url, encoded_call(protocol), headers)
    assert status == 200 and answered == answer_type
    reader = TBinaryProtocol if answer_type == THRIFT_BINARY else TJSONProtocol
    client = AuroraSchedulerManager.Client(reader(TMemoryBuffer(body)))
    assert client.recv_getJobs().responseCode == ResponseCode.OK


def test_bad_requests_get_http_errors(aurora: LocalAurora) -> None:
    auth = {"Authorization": f"Bearer {aurora.token}"}
    status, _, _ = post(aurora.url, b"hello", {"Content-Type": "text/plain"} | auth)
    assert status == 415
    status, _, body = post(aurora.url, b"not thrift", {"Content-Type": THRIFT_JSON} | auth)
    assert status == 400 and b"malformed" in body
    with pytest.raises(AuroraTransportError, match="HTTP 404"):
        AuroraClient(aurora.url + "/nowhere", token=aurora.token).jobs()


class _Redirect(BaseHTTPRequestHandler):
    """Answers ``/old/api`` with a 307 to ``target``, and relays ``/api`` to ``upstream``."""

    target = ""
    upstream = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/api" and self.upstream:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            status, content_type, answer = post(self.upstream, body, headers)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
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
    _Redirect.target = _Redirect.upstream = ""


def test_a_redirect_within_the_origin_is_followed(
    aurora: LocalAurora, redirector: ThreadingHTTPServer
) -> None:
    _Redirect.target, _Redirect.upstream = "/api", aurora.url
    host, port = redirector.server_address[:2]
    client = AuroraClient(f"http://{host!s}:{port}/old", protocol="binary", token=aurora.token)
    assert client.jobs("nobody") == []
    assert client._transport.url == f"http://{host!s}:{port}/api"  # remembered


def test_a_redirect_to_another_origin_is_refused_and_nothing_reaches_it(
    aurora: LocalAurora, redirector: ThreadingHTTPServer
) -> None:
    _Redirect.target = aurora.url + "/api"  # another port: another origin
    host, port = redirector.server_address[:2]
    client = AuroraClient(f"http://{host!s}:{port}/old", token=aurora.token)
    with pytest.raises(AuroraTransportError, match="only redirects within the same origin"):
        client.create_job("www", "test", "redirected", [("p", "true")], 0.1, 8, 8)
    assert AuroraClient(aurora.url, token=aurora.token).tasks("www/test/redirected") == []


def test_redirect_targets_stay_on_the_origin_or_upgrade_to_https() -> None:
    here = "http://aurora.example:8081/api"
    assert redirect_target(here, "/leader/api") == "http://aurora.example:8081/leader/api"
    assert redirect_target(here, "https://aurora.example/api") == "https://aurora.example/api"
    assert redirect_target("https://a.example/api", "https://a.example:443/x") == (
        "https://a.example:443/x"
    )
    for refused in (
        "http://evil.example:8081/api",  # another host
        "http://aurora.example:8082/api",  # another port
        "https://evil.example/api",  # https, but another host
        "file:///etc/passwd",
    ):
        with pytest.raises(AuroraTransportError, match="same origin"):
            redirect_target(here, refused)
    with pytest.raises(AuroraTransportError, match="same origin"):  # no downgrade
        redirect_target("https://a.example/api", "http://a.example/api")


def test_redirect_loop_is_bounded(redirector: ThreadingHTTPServer) -> None:
    host, port = redirector.server_address[:2]
    _Redirect.target = f"http://{host!s}:{port}/old/api"
    with pytest.raises(AuroraTransportError, match="more than 3 redirects"):
        AuroraClient(f"http://{host!s}:{port}/old").jobs()


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", "Bearer"])
def test_a_call_without_the_token_is_refused_and_launches_nothing(
    aurora: LocalAurora, tmp_path: Path, token: str | None
) -> None:
    marker = tmp_path / "ran"
    config = job("unauthorized")
    config.taskConfig.executorConfig.data = task_instance(
        "www", "test", "unauthorized", [("p", f"touch {marker}")], 0.1, 16, 16
    )
    body = TMemoryBuffer()
    AuroraSchedulerManager.Client(TJSONProtocol(body)).send_createJob(config)
    headers = {"Content-Type": THRIFT_JSON}
    if token:
        headers["Authorization"] = token if token == "Bearer" else f"Bearer {token}"
    status, content_type, answer = post(aurora.url, body.getvalue(), headers)
    assert status == 401 and content_type == "text/plain"
    assert answer.decode().strip() == (
        "A valid API token is required: send Authorization: Bearer <token>."
    )
    with pytest.raises(AuroraTransportError, match="HTTP 401"):
        AuroraClient(aurora.url, token=token if token and len(token) > 16 else None).jobs()
    assert AuroraClient(aurora.url, token=aurora.token).tasks("www/test/unauthorized") == []
    assert not marker.exists()


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
    sandboxes, state = tmp_path / "sandboxes", tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aurora.local", "--port", "0", "--sandbox-root", str(sandboxes),
         "--state-dir", str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "MM_SECRET_PROBE": "server-only-secret"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        token_line, line = proc.stdout.readline(), proc.stdout.readline()
        token_file = state / "api-token"
        assert f"API token in {token_file}" in token_line
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert state.stat().st_mode & 0o777 == 0o700
        assert "ready at http://127.0.0.1:" in line
        url = line.split("ready at ")[1].split()[0]
        client = AuroraClient(url, token_file=token_file)
        key = client.create_job(
            "www", "test", "cli", [("s", "env > env.txt; echo $$ > pid; sleep 60")], 0.1, 8, 8
        )
        deadline = time.monotonic() + 10
        while not list(sandboxes.glob("*/pid")) or not next(sandboxes.glob("*/pid")).read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pid = int(next(sandboxes.glob("*/pid")).read_text())
        environment = next(sandboxes.glob("*/env.txt")).read_text()
        assert "server-only-secret" not in environment  # not the server's environment
        assert "PATH=/usr/local/bin:/usr/bin:/bin" in environment.splitlines()
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
    again = LocalAurora(port=0, sandbox_root=sandboxes, state_dir=state)
    assert again.token == token_file.read_text().strip()  # generated once, then reused
    again.stop()


def test_listening_beyond_loopback_needs_an_explicit_token(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "aurora.local", "--host", "0.0.0.0", "--port", "0",
         "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if k != "MM_AURORA_TOKEN_FILE"},
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "aurora.local: refusing to listen on 0.0.0.0 without an explicitly configured token: "
        "pass --token-file PATH (a 0600 file holding the token) or listen on 127.0.0.1"
    )
    assert not (tmp_path / "state").exists()
    leaky = tmp_path / "token"
    leaky.write_text("a-token-that-others-can-read\n")
    leaky.chmod(0o644)
    refused = subprocess.run(
        [sys.executable, "-m", "aurora.local", "--host", "0.0.0.0", "--port", "0",
         "--token-file", str(leaky)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 2 and "is readable by others" in refused.stderr
    with pytest.raises(AuroraError, match=r"refusing to listen on 0\.0\.0\.0"):
        LocalAurora(host="0.0.0.0", port=0)
    explicit = LocalAurora(host="0.0.0.0", port=0, token="an-explicit-token-0123456789")
    try:
        url = explicit.start().replace("0.0.0.0", "127.0.0.1")
        assert AuroraClient(url, token="an-explicit-token-0123456789").jobs() == []
    finally:
        explicit.stop()


def test_executor_data_round_trips_the_aurora_client_format() -> None:
    data = json.loads(task_instance("r", "e", "n", [("a", "x"), ("b", "y")], 0.5, 2, 3))
    assert data["task"]["constraints"] == [{"order": ["a", "b"]}]
    assert data["task"]["resources"] == {"cpu": 0.5, "ram": 2 << 20, "disk": 3 << 20}
    assert [p["cmdline"] for p in data["task"]["processes"]] == ["x", "y"]
