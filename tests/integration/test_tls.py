"""``amqps://`` end to end against a RabbitMQ node of the test's own with a TLS-only listener.

The shared broker is left alone: the module starts a second node (own name, Erlang
distribution port, data, logs, config and cookie in a temporary directory) whose only
listener is TLS on 127.0.0.1 and 127.0.0.2, requiring a client certificate signed by the
CA that ``matchmaker.tls`` makes, and stops it at the end.
"""

from __future__ import annotations

import os
import secrets
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.rabbit_node import RabbitNode, RabbitNodeError
from matchmaker.client import Client
from matchmaker.config import load
from matchmaker.devtools.cluster import LocalCluster
from matchmaker.messages import TaskRequest, decode_results, encode
from matchmaker.tls import TLSError, make_all
from matchmaker.wire import broker
from matchmaker.wire.broker import BrokerError, TLSFiles
from membership.agent import free_port
from tests.workers_support import wait_for

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 40.0


@dataclass
class TLSBroker:
    node: RabbitNode
    port: int
    password: str
    pki: Path

    def url(self, vhost: str = "mm", host: str = "127.0.0.1", scheme: str = "amqps") -> str:
        return f"{scheme}://mm:{self.password}@{host}:{self.port}/{vhost}"

    @property
    def tls(self) -> TLSFiles:
        return TLSFiles(
            str(self.pki / "ca.pem"),
            str(self.pki / "client-mm.pem"),
            str(self.pki / "client-mm.key"),
        )

    @property
    def flags(self) -> list[str]:
        t = self.tls
        return ["--broker-ca", t.ca, "--broker-cert", t.cert, "--broker-key", t.key]


def _config(pki: Path, port: int) -> tuple[str, ...]:
    return (
        "listeners.tcp = none",
        f"listeners.ssl.1 = 127.0.0.1:{port}",
        f"listeners.ssl.2 = 127.0.0.2:{port}",
        f"ssl_options.cacertfile = {pki / 'ca.pem'}",
        f"ssl_options.certfile = {pki / 'server.pem'}",
        f"ssl_options.keyfile = {pki / 'server.key'}",
        "ssl_options.verify = verify_peer",
        "ssl_options.fail_if_no_peer_cert = true",
        "loopback_users = none",
    )


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSBroker]:
    base = tmp_path_factory.mktemp("tls-broker")
    pki = base / "pki"
    make_all(pki, clients=["mm"])
    port, name = free_port(), f"mm-tls-{secrets.token_hex(4)}@localhost"
    # no AMQP port from the environment: the config's TLS listeners are the only ones
    node = RabbitNode(name, base, port=None, conf=_config(pki, port))
    tls = TLSBroker(node, port, secrets.token_hex(12), pki)
    try:
        try:
            node.launch()
            node.wait(START_TIMEOUT)
        except RabbitNodeError as error:
            pytest.fail(f"the test's RabbitMQ node did not start: {error}")
        node.ctl("add_user", "mm", stdin=tls.password + "\n")
        for vhost in ("mm", "pull"):
            node.ctl("add_vhost", vhost)
            node.ctl("set_permissions", "-p", vhost, "mm", ".*", ".*", ".*")
        yield tls
    finally:
        node.stop()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def _one_sentence(done: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exactly one line on stderr and no traceback."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# -- against the TLS node ------------------------------------------------------------------


def test_submit_scheduler_worker_result_over_amqps(tls_broker: TLSBroker, tmp_path: Path) -> None:
    url = tls_broker.url()
    cluster = LocalCluster(
        broker_url=url, workdir=tmp_path / "cluster", scheduler_args=tuple(tls_broker.flags)
    )
    try:
        cluster.start_scheduler()
        cluster.start_worker("tls-w1", ["sleep"], 2, extra=tls_broker.flags)
        tls = tls_broker.tls  # the CLI takes them from the environment
        submitted = _cli(
            "matchmaker", "submit", "--broker-url", url, "--id", "over-tls",
            "--type", "sleep", "--payload", '{"seconds": 0.1}',
            env={"MM_BROKER_CA": tls.ca, "MM_BROKER_CERT": tls.cert, "MM_BROKER_KEY": tls.key},
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.split() == ["over-tls"]
        row = cluster.wait_states(["over-tls"], timeout=45)["over-tls"]
        assert (row.worker, row.attempt, row.output) == ("tls-w1", 1, {"slept": 0.1})
        with Client(  # the client library, with the same files
            url, name="client over tls", broker_ca=tls.ca, broker_cert=tls.cert, broker_key=tls.key
        ) as client:
            handle = client.submit("sleep", {"seconds": 0}, id="client-over-tls")
            assert handle.wait(timeout=45) == {"slept": 0}
            connections = tls_broker.node.ctl("list_connections", "client_properties", "ssl")
        for name in ("matchmaker-scheduler", "worker tls-w1", "client over tls"):
            mine = [line for line in connections.splitlines() if name in line]
            assert mine and all(line.endswith("\ttrue") for line in mine), connections
    finally:
        cluster.stop()


def test_a_pull_worker_runs_a_request_over_amqps(tls_broker: TLSBroker, tmp_path: Path) -> None:
    url = tls_broker.url("pull")
    connection = broker.connect(url, tls=tls_broker.tls)
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "workers", "--name", "tls-p1", "--caps", "sleep",
            "--mode", "pull", "--broker-url", url, "--sandbox", str(tmp_path / "sandbox"),
            *tls_broker.flags,
        ],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        channel = connection.channel()
        broker.declare_core(channel)
        broker.declare_pull(channel, "sleep")
        request = TaskRequest("pulled", "sleep", {"seconds": 0})
        channel.basic_publish("", broker.pull_queue("sleep"), encode(request), broker.PERSISTENT)

        def final() -> tuple[str, str] | None:
            assert worker.poll() is None, "the pull worker exited"
            method, _props, body = channel.basic_get(broker.RESULTS, auto_ack=True)
            if method is None:
                return None
            done = [r for r in decode_results(body).items if r.state != "running"]
            return (done[0].state, done[0].worker) if done else None

        assert wait_for(final, 30, "the pull worker's result") == ("succeeded", "tls-p1")
    finally:
        worker.terminate()
        worker.wait(30)
        connection.close()


def test_a_client_trusting_another_ca_is_refused_in_one_sentence(
    tls_broker: TLSBroker, tmp_path: Path
) -> None:
    other = make_all(tmp_path / "other", clients=["mm"])
    wrong = TLSFiles(str(other["ca"].cert), tls_broker.tls.cert, tls_broker.tls.key)
    with pytest.raises(BrokerError) as refused:
        broker.connect(tls_broker.url(), tls=wrong, attempts=5)
    assert str(refused.value) == (
        f"the broker at 127.0.0.1:{tls_broker.port}/mm presented a certificate that does not "
        f"verify against {wrong.ca}: self-signed certificate in certificate chain"
    )
    cli = _cli(
        "matchmaker", "submit", "--broker-url", tls_broker.url(), "--type", "sleep",
        "--broker-ca", wrong.ca, "--broker-cert", wrong.cert, "--broker-key", wrong.key,
    )  # fmt: skip
    assert _one_sentence(cli) == f"matchmaker: {refused.value}"
    worker = _cli(
        "workers", "--name", "tls-bad", "--caps", "sleep", "--mode", "pull",
        "--broker-url", tls_broker.url(), "--sandbox", str(tmp_path / "sandbox"),
        env={"MM_BROKER_CA": wrong.ca, "MM_BROKER_CERT": wrong.cert, "MM_BROKER_KEY": wrong.key},
    )  # fmt: skip
    assert worker.returncode == 2
    assert _one_sentence(worker) == f"worker tls-bad: {refused.value}"
    flags = ("--broker-ca", wrong.ca, "--broker-cert", wrong.cert, "--broker-key", wrong.key)
    with LocalCluster(tls_broker.url(), tmp_path / "cluster", scheduler_args=flags) as cluster:
        scheduler = cluster.start_scheduler(wait=False)
        assert scheduler.popen.wait(30) == 2  # not retried: no retry can fix it
        log = scheduler.log.read_text()
        assert "Traceback" not in log and log.splitlines()[-1] == f"matchmaker: {refused.value}"


def test_the_host_name_is_checked(tls_broker: TLSBroker) -> None:
    with pytest.raises(
        BrokerError, match=r"does not verify against .*ca\.pem: IP address mismatch"
    ):
        broker.connect(tls_broker.url(host="127.0.0.2"), tls=tls_broker.tls)


# TLS 1.3: the broker checks the client's certificate after the client's side of the
# handshake is done, so its refusal arrives as an alert or as a closed connection.
REFUSED_CLIENT = (
    r"^(the broker at .* requires a client certificate \(broker_cert, broker_key\)"
    r"|the TLS handshake with the broker at .* failed: tlsv1 alert unknown ca"
    r"|cannot reach the broker at .*: it closed the connection after the TLS handshake "
    r"\(a client certificate it requires or does not trust\? see broker_cert, broker_key\))$"
)


def test_a_client_without_certificate_is_refused(tls_broker: TLSBroker) -> None:
    with pytest.raises(BrokerError, match=REFUSED_CLIENT) as refused:
        broker.connect(tls_broker.url(), tls=TLSFiles(tls_broker.tls.ca))
    assert "unknown ca" not in str(refused.value)


def test_a_client_certificate_from_another_ca_is_refused(
    tls_broker: TLSBroker, tmp_path: Path
) -> None:
    other = make_all(tmp_path / "other", clients=["mm"])["client-mm"]
    forged = TLSFiles(tls_broker.tls.ca, str(other.cert), str(other.key))
    with pytest.raises(BrokerError, match=REFUSED_CLIENT) as refused:
        broker.connect(tls_broker.url(), tls=forged)
    assert "requires a client certificate" not in str(refused.value)


def test_plain_amqp_to_the_tls_port_fails_cleanly(tls_broker: TLSBroker) -> None:
    plain = tls_broker.url(scheme="amqp")
    with pytest.raises(BrokerError) as refused:
        broker.connect(plain)
    assert str(refused.value) == (
        f"cannot reach the broker at 127.0.0.1:{tls_broker.port}/mm: it closed the connection "
        "during the AMQP handshake (a TLS port? use amqps://)"
    )
    cli = _cli("matchmaker", "cancel", "some-task", "--broker-url", plain)
    assert _one_sentence(cli) == f"matchmaker: {refused.value}"


def test_amqps_to_a_plain_port_says_so() -> None:
    url = "amqps://matchmaker:matchmaker@127.0.0.1:5672/matchmaker"
    with pytest.raises(BrokerError, match=r"failed: wrong version number .*use amqp://"):
        broker.connect(url, attempts=3)


# -- units: what a connection is given ----------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_all(directory, clients=["alice"])
    return directory


def test_amqps_options_verify_the_certificate_and_the_host(pki: Path) -> None:
    tls = TLSFiles(
        str(pki / "ca.pem"), str(pki / "client-alice.pem"), str(pki / "client-alice.key")
    )
    options = broker.tls_options("amqps://u:p@broker.example:5671/v", tls)
    assert options is not None and options.server_hostname == "broker.example"
    assert options.context.verify_mode == ssl.CERT_REQUIRED and options.context.check_hostname
    default = broker.tls_options("amqps://u:p@broker.example/v", None)
    assert default is not None and default.context.check_hostname  # the system trust store
    assert broker.tls_options("amqp://u:p@broker.example/v", None) is None


@pytest.mark.parametrize(
    ("url", "files", "error"),
    [
        ("amqp://h/v", TLSFiles("{pki}/ca.pem"), "apply to amqps:// URLs only"),
        ("amqps://h/v", TLSFiles("", "", "{pki}/server.key"), "broker_key is set without"),
        ("amqps://h/v", TLSFiles("{pki}/missing.pem"), "cannot read broker_ca .*missing.pem: no"),
        ("amqps://h/v", TLSFiles("{pki}"), "broker_ca .* is not a regular file"),
        ("amqps://h/v", TLSFiles("{pki}/ca.srl"), "no certificate or crl found"),
        (
            "amqps://h/v",
            TLSFiles("{pki}/ca.pem", "{pki}/client-alice.pem", "{pki}/server.key"),
            "cannot use the TLS files .*: key values mismatch",
        ),
    ],
)
def test_unusable_tls_settings_are_one_sentence(
    pki: Path, url: str, files: TLSFiles, error: str
) -> None:
    tls = TLSFiles(*(f.format(pki=pki) for f in (files.ca, files.cert, files.key)))
    with pytest.raises(BrokerError, match=error):
        broker.tls_options(url, tls)


def test_the_settings_come_from_config_env_and_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from workers.__main__ import config_from, parser

    monkeypatch.setenv("MM_BROKER_CA", "/env/ca.pem")
    config = load(flags={"broker_cert": "/flag/cert.pem"})
    assert TLSFiles.of(config) == TLSFiles("/env/ca.pem", "/flag/cert.pem", "")
    args = parser().parse_args(
        ["--name", "w", "--caps", "sleep", "--no-serf", "--broker-key", "/k.pem"]
    )
    assert TLSFiles.of(config_from(args)) == TLSFiles("/env/ca.pem", "", "/k.pem")


# -- units: the certificates ----------------------------------------------------------------


def _text(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-text"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip


def test_the_certificates_verify_and_the_keys_are_private(pki: Path) -> None:
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    for key in ("ca.key", "server.key", "client-alice.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600
    checked = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki / "ca.pem"),
         str(pki / "server.pem"), str(pki / "client-alice.pem")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    server, client = _text(pki / "server.pem"), _text(pki / "client-alice.pem")
    assert "DNS:localhost, IP Address:127.0.0.1" in server and "Server Authentication" in server
    assert "Client Authentication" in client and "CN = alice" in client


def test_a_rerun_keeps_the_ca_and_adds_what_is_missing(tmp_path: Path) -> None:
    first = make_all(tmp_path / "pki")
    ca = first["ca"].cert.read_bytes()
    again = make_all(tmp_path / "pki", clients=["bob"])
    assert again["ca"].cert.read_bytes() == ca and again["client-bob"].cert.exists()
    with pytest.raises(TLSError, match="'bad host!' is not a host name"):
        make_all(tmp_path / "other", hosts=["bad host!"])
    done = _cli("matchmaker.tls", str(tmp_path / "cli"), "--host", "mq.example", "--client", "x")
    assert done.returncode == 0, done.stderr
    assert "DNS:mq.example" in _text(tmp_path / "cli" / "server.pem")
