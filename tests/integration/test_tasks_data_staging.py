"""data_staging with real files and a real local HTTP server."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from matchmaker.devtools.cluster import storage_site
from workers.tasks import REGISTRY, TaskContext, TaskError, fetch
from workers.tasks.data_staging import run

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)

DATA = b"temperature,pressure\n" * 5000


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    return tmp_path / "sandbox"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "storage" / "input.csv"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def ctx(sandbox: Path) -> TaskContext:
    """A worker that allows its storage directory and 127.0.0.1 (where the tests serve)."""
    return TaskContext(
        "t1", 1, "w1", sandbox, stage_roots=(sandbox.parent / "storage",), allow_net=LOOPBACK
    )


@pytest.fixture
def http_url(source: Path) -> Iterator[str]:
    with storage_site(source.parent) as url:
        yield url


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_registered() -> None:
    assert REGISTRY["data_staging"] is run


def test_file_source_is_copied_and_verified(sandbox: Path, source: Path) -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    result = run(
        {"source": source.as_uri(), "destination": "exp-1/in/input.csv", "sha256": digest.upper()},
        ctx(sandbox),
    )
    assert (sandbox / "exp-1/in/input.csv").read_bytes() == DATA
    assert result["bytes"] == len(DATA) and result["sha256"] == digest
    assert result["path"] == str(sandbox / "exp-1/in/input.csv")
    assert leftovers(sandbox) == ["exp-1/in/input.csv"]  # no temporary file left


def test_http_source_is_streamed_in(sandbox: Path, http_url: str) -> None:
    result = run({"source": f"{http_url}/input.csv", "destination": "x/input.csv"}, ctx(sandbox))
    assert (sandbox / "x/input.csv").read_bytes() == DATA
    assert result["sha256"] == hashlib.sha256(DATA).hexdigest()


def test_checksum_mismatch_leaves_nothing(sandbox: Path, source: Path) -> None:
    with pytest.raises(TaskError, match=r"sha256 of .* expected 0000"):
        run({"source": source.as_uri(), "destination": "in.csv", "sha256": "0" * 64}, ctx(sandbox))
    assert leftovers(sandbox) == []


def test_existing_file_is_kept_when_staging_fails(sandbox: Path, source: Path) -> None:
    (sandbox).mkdir()
    (sandbox / "in.csv").write_text("previous")
    with pytest.raises(TaskError):
        run({"source": source.as_uri(), "destination": "in.csv", "sha256": "1" * 64}, ctx(sandbox))
    assert (sandbox / "in.csv").read_text() == "previous"


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("../escape.csv", "'..'"),
        ("a/../../escape.csv", "'..'"),
        ("/etc/escape.csv", "absolute"),
        ("", "non-empty"),
        (".", "sandbox itself"),
    ],
)
def test_destinations_outside_the_sandbox_are_refused(
    sandbox: Path, source: Path, tmp_path: Path, destination: str, message: str
) -> None:
    with pytest.raises(TaskError, match=message):
        run({"source": source.as_uri(), "destination": destination}, ctx(sandbox))
    assert not (tmp_path / "escape.csv").exists()


def test_symlink_out_of_the_sandbox_is_refused(sandbox: Path, source: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    sandbox.mkdir()
    (sandbox / "link").symlink_to(outside)
    with pytest.raises(TaskError, match="'link' is a symbolic link"):
        run({"source": source.as_uri(), "destination": "link/stolen.csv"}, ctx(sandbox))
    (sandbox / "deep").mkdir()
    (sandbox / "deep" / "link").symlink_to(outside)
    with pytest.raises(TaskError, match="'deep/link' is a symbolic link"):
        run({"source": source.as_uri(), "destination": "deep/link/sub/stolen.csv"}, ctx(sandbox))
    assert list(outside.iterdir()) == []


def test_oversize_sources_are_refused(sandbox: Path, source: Path, http_url: str) -> None:
    with pytest.raises(TaskError, match="larger than max_bytes"):
        run({"source": source.as_uri(), "destination": "a", "max_bytes": 100}, ctx(sandbox))
    with pytest.raises(TaskError, match="larger than max_bytes"):
        run({"source": f"{http_url}/input.csv", "destination": "b", "max_bytes": 100}, ctx(sandbox))
    assert leftovers(sandbox) == []


def test_unreachable_and_missing_sources(sandbox: Path, http_url: str, tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(TaskError, match=r"cannot reach http://127\.0\.0\.1"):
        run({"source": f"http://127.0.0.1:{port}/x", "destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="answered HTTP 404"):
        run({"source": f"{http_url}/missing.csv", "destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="does not exist"):
        run({"source": (tmp_path / "storage/nope").as_uri(), "destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="not a regular file"):
        (tmp_path / "storage" / "sub").mkdir()
        run({"source": (tmp_path / "storage/sub").as_uri(), "destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="'ftp' is not supported"):
        run({"source": "ftp://example.org/x", "destination": "x"}, ctx(sandbox))


def test_bad_payloads(sandbox: Path, source: Path) -> None:
    with pytest.raises(TaskError, match="'source'"):
        run({"destination": "x"}, ctx(sandbox))
    with pytest.raises(TaskError, match="'sha256'"):
        run({"source": source.as_uri(), "destination": "x", "sha256": "abc"}, ctx(sandbox))
    with pytest.raises(TaskError, match="'max_bytes'"):
        run({"source": source.as_uri(), "destination": "x", "max_bytes": 0}, ctx(sandbox))


def test_cancelled_staging_stops(sandbox: Path, source: Path) -> None:
    context = ctx(sandbox)
    context.cancelled.set()
    with pytest.raises(TaskError, match="cancelled"):
        run({"source": source.as_uri(), "destination": "x"}, context)
    assert leftovers(sandbox) == []


# -- what a source may be: the worker's configuration decides --------------------------


def bare(sandbox: Path) -> TaskContext:
    """A worker with the defaults: no staging root, no network beyond public addresses."""
    return TaskContext("t1", 1, "w1", sandbox)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "file:///proc/self/environ"])
def test_local_files_are_refused_without_a_stage_root(sandbox: Path, url: str) -> None:
    with pytest.raises(TaskError, match="copies no local files"):
        run({"source": url, "destination": "stolen"}, bare(sandbox))
    assert not (sandbox / "stolen").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "not under a staging root"),
        ("file:///proc/self/environ", "not under a staging root"),
        ("file://{storage}/../../../etc/passwd", "without '..'"),
        ("file://{storage}/%2e%2e/%2e%2e/etc/passwd", "without '..'"),
        ("file://{storage}/passwd-link", "symbolic link"),
        ("file://{storage}/etc-link/passwd", "symbolic link"),
        ("file://{storage}/pipe", "not a regular file"),
    ],
)
def test_sources_outside_the_stage_root_are_refused(
    sandbox: Path, source: Path, url: str, message: str
) -> None:
    storage = source.parent
    (storage / "passwd-link").symlink_to("/etc/passwd")
    (storage / "etc-link").symlink_to("/etc")
    os.mkfifo(storage / "pipe")  # a FIFO with no writer: open() would wait for one forever
    with pytest.raises(TaskError, match=message):
        run({"source": url.format(storage=storage), "destination": "stolen"}, ctx(sandbox))
    assert not (sandbox / "stolen").exists()


@pytest.mark.timeout(20)
def test_a_fifo_source_fails_fast(sandbox: Path, source: Path) -> None:
    fifo = source.parent / "fifo"
    os.mkfifo(fifo)
    began = time.monotonic()
    with pytest.raises(TaskError, match=r"fifo is not a regular file"):
        run({"source": fifo.as_uri(), "destination": "x"}, ctx(sandbox))
    assert time.monotonic() - began < 2


def test_staged_files_and_directories_are_private(sandbox: Path, source: Path) -> None:
    run({"source": source.as_uri(), "destination": "exp/in/input.csv"}, ctx(sandbox))
    assert (sandbox / "exp/in/input.csv").read_bytes() == DATA
    assert stat.S_IMODE((sandbox / "exp/in/input.csv").stat().st_mode) == 0o600
    for directory in (sandbox, sandbox / "exp", sandbox / "exp/in"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_symlinked_sandbox_root_is_refused(tmp_path: Path, source: Path) -> None:
    real = tmp_path / "real-sandbox"
    real.mkdir()
    (tmp_path / "sandbox").symlink_to(real)
    with pytest.raises(TaskError, match="is a symbolic link; refusing to use it as a root"):
        run({"source": source.as_uri(), "destination": "x"}, ctx(tmp_path / "sandbox"))
    assert list(real.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_a_sandbox_root_of_another_user_is_refused(tmp_path: Path, source: Path) -> None:
    planted = tmp_path / "planted"  # say, made in a shared /tmp before the worker started
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)
    with pytest.raises(TaskError, match="belongs to another user; refusing to use it"):
        run({"source": source.as_uri(), "destination": "x"}, ctx(planted))
    assert list(planted.iterdir()) == []


def test_loopback_is_refused_by_default_and_allowed_by_the_worker(
    sandbox: Path, http_url: str
) -> None:
    with pytest.raises(TaskError, match=r"resolves to 127\.0\.0\.1 \(loopback\)"):
        run({"source": f"{http_url}/input.csv", "destination": "a"}, bare(sandbox))
    assert not (sandbox / "a").exists()
    run({"source": f"{http_url}/input.csv", "destination": "a"}, ctx(sandbox))
    assert (sandbox / "a").read_bytes() == DATA


def test_other_spellings_of_loopback_are_refused(sandbox: Path, http_url: str) -> None:
    port = http_url.rsplit(":", 1)[1]
    for host in ("2130706433", "0x7f000001", "127.1", "localhost", "[::ffff:127.0.0.1]"):
        with pytest.raises(TaskError, match="this worker does not fetch from such addresses"):
            run({"source": f"http://{host}:{port}/input.csv", "destination": "a"}, bare(sandbox))
    assert not sandbox.exists() or leftovers(sandbox) == []
    # the decimal form is the same loopback address: allowed only where 127.0.0.1 is
    run({"source": f"http://2130706433:{port}/input.csv", "destination": "a"}, ctx(sandbox))
    assert (sandbox / "a").read_bytes() == DATA


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "not globally routable"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_address_policy(address: str, why: str | None) -> None:
    got = fetch.allowed(ipaddress.ip_address(address), LOOPBACK)
    expected_allowed = address == "127.0.0.1"
    assert (got is None) == (why is None or expected_allowed)
    if why is not None:
        assert got is not None and got.startswith(why)


class _Redirect(BaseHTTPRequestHandler):
    """Redirects every GET to the server's ``target`` (hops counted in ``server.hits``)."""

    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_response(302)
        self.send_header("Location", self.server.target.format(path=self.path))  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def redirector(target: str, host: str = "127.0.0.1") -> Iterator[tuple[str, Any]]:
    server = ThreadingHTTPServer((host, 0), _Redirect)
    server.target, server.hits = target, 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_redirect_to_a_forbidden_address_is_refused(sandbox: Path, http_url: str) -> None:
    # the forbidden server really answers (127.0.0.2 is loopback too), and is never asked
    with (
        redirector(f"{http_url}/input.csv", host="127.0.0.2") as (forbidden, hidden),
        redirector(forbidden + "{path}") as (allowed, first),
    ):
        with pytest.raises(TaskError, match=r"127\.0\.0\.2 \(loopback\)"):
            run({"source": f"{allowed}/input.csv", "destination": "a"}, ctx(sandbox))
        assert first.hits == 1 and hidden.hits == 0
    for target, message in [
        ("http://169.254.169.254/latest/meta-data/", r"169\.254\.169\.254 \(link-local\)"),
        ("file:///etc/passwd", r"file:///etc/passwd is not an http\(s\) URL"),
    ]:
        with redirector(target) as (allowed, _server), pytest.raises(TaskError, match=message):
            run({"source": f"{allowed}/x", "destination": "a"}, ctx(sandbox))
    assert not (sandbox / "a").exists()


def test_allowed_redirects_are_followed_a_few_times_only(sandbox: Path, http_url: str) -> None:
    with redirector(f"{http_url}/input.csv") as (allowed, server):
        run({"source": f"{allowed}/x", "destination": "a"}, ctx(sandbox))
        assert (sandbox / "a").read_bytes() == DATA and server.hits == 1
    with redirector("{path}") as (loop, server):  # redirects to itself for ever
        with pytest.raises(TaskError, match="more than 5 redirects"):
            run({"source": f"{loop}/x", "destination": "b"}, ctx(sandbox))
        assert server.hits == 6


@contextlib.contextmanager
def slow_server(headers: bytes) -> Iterator[str]:
    """A server on 127.0.0.1 that sends ``headers`` then a byte a second until the client
    goes (or, with ``headers`` empty, says nothing at all)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                with contextlib.suppress(OSError):
                    conn.sendall(headers)
                    while not stop.wait(1.0):
                        if headers:
                            conn.sendall(b"x")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/data"
    finally:
        stop.set()
        thread.join()
        listener.close()


DRIP = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("headers", [DRIP, b"HTTP/1.1 200 OK\r\n", b""])
def test_a_dripping_or_silent_server_is_dropped_at_the_deadline(
    sandbox: Path, headers: bytes
) -> None:
    with slow_server(headers) as url:
        began = time.monotonic()
        with pytest.raises(TaskError, match="did not finish in time"):
            run({"source": url, "destination": "a", "timeout": 1.5}, ctx(sandbox))
        assert 1.4 < time.monotonic() - began < 3.0
    assert leftovers(sandbox) == []


@pytest.mark.timeout(30)
def test_a_dripping_server_is_dropped_on_cancel(sandbox: Path) -> None:
    context = ctx(sandbox)
    errors: list[str] = []

    def stage() -> None:
        try:
            run({"source": url, "destination": "a"}, context)
        except TaskError as e:
            errors.append(str(e))

    with slow_server(DRIP) as url:
        thread = threading.Thread(target=stage)
        thread.start()
        time.sleep(0.5)  # let it be reading; the bound below is what is tested
        cancelled_at = time.monotonic()
        context.cancelled.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert time.monotonic() - cancelled_at < 1.5
    assert errors and "was cancelled" in errors[0]


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for the name ``localhost`` only (no IP address)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=localhost")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "san.ext")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_is_checked_against_the_name_while_connecting_to_the_checked_address(
    sandbox: Path, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the default context trusts the test CA
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(source.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        # localhost may also resolve to ::1, which is not allowed here: 127.0.0.1 is used
        run({"source": f"https://localhost:{port}/input.csv", "destination": "a"}, ctx(sandbox))
        assert (sandbox / "a").read_bytes() == DATA
        by_address = {"source": f"https://127.0.0.1:{port}/input.csv", "destination": "b"}
        with pytest.raises(TaskError, match=r"cannot reach https://127\.0\.0\.1.*certificate"):
            run(by_address, ctx(sandbox))  # the certificate names localhost only
        by_name = {"source": f"https://localhost:{port}/input.csv", "destination": "b"}
        with pytest.raises(TaskError, match=r"127\.0\.0\.1 \(loopback\)"):
            run(by_name, bare(sandbox))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert not (sandbox / "b").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1/x", "is not a valid URL"),
        ("file://[::1/x", "is not a valid URL"),
        ("http://[::1]:99999/", "not a valid URL: Port out of range"),
        ("http://127.0.0.1:0/", "port 0"),
        ("https://:80/", "names no host"),
        ("file:///%00", "without '..'"),
    ],
)
def test_malformed_sources_are_one_sentence(sandbox: Path, url: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        run({"source": url, "destination": "x", "timeout": 5}, ctx(sandbox))


def test_a_malformed_redirect_is_one_sentence(sandbox: Path) -> None:
    with (
        redirector("http://[::1/x") as (allowed, _server),
        pytest.raises(TaskError, match=r"redirected to 'http://\[::1/x', not a valid URL"),
    ):
        run({"source": f"{allowed}/x", "destination": "a"}, ctx(sandbox))
