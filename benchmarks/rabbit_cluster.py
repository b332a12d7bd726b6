"""A private RabbitMQ cluster for tests: three nodes (by default) joined into one.

Each ``RabbitNode`` has its own node name, AMQP and distribution ports, and its own
data, log and home directories under the cluster's working directory; all share one
Erlang cookie (written into each node's home, where ``rabbitmqctl`` finds it too).
A node may run inside a network namespace (``prefix``, e.g. ``ip netns exec h1``)
under a long node name such as ``rabbit@10.99.0.11``: then no ``/etc/hosts`` entry
is needed, each namespace runs its own epmd, and distribution crosses the bridge.
Nothing here touches the machine's shared broker (``rabbit@<host>`` on 5672).

``python -m benchmarks.rabbit_cluster start --dir DIR`` starts a loopback cluster and
prints its URL list (comma-separated, what ``--broker-url`` takes); ``stop --dir DIR``
stops it (``scripts/cluster.sh`` wraps both).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.fault_env import FaultEnvError, _rabbit_tool
from membership.agent import free_port

CONF = "\n".join(
    [
        "# a private test node: a minority pauses, so a partition cannot split the cluster",
        "cluster_partition_handling = pause_minority",
        "",
    ]
)


class ClusterEnvError(FaultEnvError):
    """The cluster could not be started or joined; the text says which node and why."""


@dataclass
class RabbitNode:
    """One node: ``name`` (``short@localhost`` or, with ``longnames``, ``rabbit@<ip>``)
    listening on ``host:port``, its files under ``workdir``, its commands run behind
    ``prefix`` (empty, or ``ip netns exec <ns>``)."""

    name: str
    workdir: Path
    cookie: str
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    prefix: tuple[str, ...] = ()
    longnames: bool = False
    pid: int | None = None  # the process group of the running server

    def env(self) -> dict[str, str]:
        base = self.workdir
        return {
            **os.environ,
            "HOME": str(base),  # the cookie, shared with rabbitmqctl
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_USE_LONGNAME": "true" if self.longnames else "false",
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        }

    def ctl(self, *args: str, timeout: float = 90.0, tool: str = "rabbitmqctl") -> str:
        """``rabbitmqctl -n <node> args`` (behind the prefix); ClusterEnvError with its
        first error line."""
        command = [*self.prefix, _rabbit_tool(tool), "-n", self.name, "-q", *args]
        if self.longnames:
            command.insert(len(self.prefix) + 1, "-l")
        try:
            done = subprocess.run(
                command, env=self.env(), capture_output=True, text=True, timeout=timeout,
                check=True, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.CalledProcessError as error:
            lines = (error.stderr or error.stdout or "").strip().splitlines()
            why = next((line for line in lines if line.strip()), "no output")
            raise ClusterEnvError(f"{tool} {args[0]} on {self.name} failed: {why}") from None
        except subprocess.TimeoutExpired:
            raise ClusterEnvError(
                f"{tool} {args[0]} on {self.name} did not answer in {timeout:g}s"
            ) from None
        return done.stdout

    def launch(self) -> None:
        """Start the server process (``wait`` waits for it)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cookie = self.workdir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq.conf").write_text(CONF)
        with (self.workdir / "server.log").open("ab") as log:
            process = subprocess.Popen(
                [*self.prefix, _rabbit_tool("rabbitmq-server")], env=self.env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid = process.pid

    def wait(self, timeout: float = 120.0) -> None:
        """Until the node's application runs; ClusterEnvError with its log's tail if not."""
        try:
            self.ctl("wait", str(self.workdir / "rabbit.pid"), "--timeout", str(int(timeout)),
                     timeout=timeout + 30)  # fmt: skip
            self.ctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 30)
        except ClusterEnvError as error:
            raise ClusterEnvError(f"{error}\n{self.log_tail()}") from None

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """``kill -9`` of the node's whole process group: a crash, no goodbye."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._reap()

    def stop(self) -> None:
        """Stop the node (``rabbitmqctl stop``, SIGKILL after a bound)."""
        if not self.alive():
            return
        with contextlib.suppress(ClusterEnvError):
            self.ctl("stop", timeout=60)
        deadline = time.monotonic() + 20
        while self.alive() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.2)
        self.kill()

    def _reap(self) -> None:
        assert self.pid is not None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)

    @property
    def amqp_host(self) -> str:
        return self.host

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = (self.workdir / "server.log").read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class RabbitCluster:
    """Nodes joined to the first one, with one vhost and one user with every right on it."""

    nodes: list[RabbitNode]
    vhost: str = "mm-cluster"
    user: str = "mm-cluster"
    password: str = field(default_factory=lambda: secrets.token_hex(16))

    @classmethod
    def loopback(cls, workdir: Path, size: int = 3, tag: str | None = None) -> RabbitCluster:
        """``size`` nodes ``mm-<tag>-<i>@localhost`` on free loopback ports."""
        tag = tag or secrets.token_hex(3)
        cookie = secrets.token_hex(20)
        nodes = [
            RabbitNode(f"mm-{tag}-{i}@localhost", workdir / f"node{i}", cookie)
            for i in range(1, size + 1)
        ]
        return cls(nodes)

    def url_of(self, node: RabbitNode) -> str:
        return f"amqp://{self.user}:{self.password}@{node.amqp_host}:{node.port}/{self.vhost}"

    @property
    def urls(self) -> list[str]:
        return [self.url_of(node) for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what ``--broker-url`` takes for a cluster."""
        return ",".join(self.urls)

    def start(self) -> RabbitCluster:
        """Start every node (at once), join the others to the first, make vhost and user."""
        try:
            for node in self.nodes:
                node.launch()
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: node.wait(), self.nodes))
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
                node.ctl("await_startup", "--timeout", "60")
            first.ctl("add_vhost", self.vhost)
            first.ctl("add_user", self.user, self.password)
            first.ctl("set_permissions", "-p", self.vhost, self.user, ".*", ".*", ".*")
        except BaseException:
            self.stop()
            raise
        return self

    def running_nodes(self, via: RabbitNode | None = None) -> list[str]:
        """The node names the cluster reports running (asked of ``via``, else the first
        node alive)."""
        via = via or next(node for node in self.nodes if node.alive())
        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def queues(self, via: RabbitNode | None = None) -> dict[str, dict[str, object]]:
        """Per queue of the vhost: its type, messages (ready + unacked) and leader."""
        via = via or next(node for node in self.nodes if node.alive())
        out = via.ctl(
            "list_queues", "-p", self.vhost, "name", "type", "messages", "leader",
            "--formatter", "json",
        )  # fmt: skip
        return {row["name"]: row for row in json.loads(out or "[]")}

    def stop(self) -> None:
        """Stop every node (the last one first, so the others need not wait for it)."""
        for node in reversed(self.nodes):
            node.stop()


# -- the command line: scripts/cluster.sh -------------------------------------------------


def _state_file(directory: Path) -> Path:
    return directory / "cluster.json"


def _save(cluster: RabbitCluster, directory: Path) -> None:
    state = {
        "vhost": cluster.vhost,
        "user": cluster.user,
        "password": cluster.password,
        "nodes": [
            {**asdict(node), "workdir": str(node.workdir), "prefix": list(node.prefix)}
            for node in cluster.nodes
        ],
    }
    path = _state_file(directory)
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)


def _load(directory: Path) -> RabbitCluster:
    state = json.loads(_state_file(directory).read_text())
    nodes = [
        RabbitNode(**{**node, "workdir": Path(node["workdir"]), "prefix": tuple(node["prefix"])})
        for node in state["nodes"]
    ]
    return RabbitCluster(nodes, state["vhost"], state["user"], state["password"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.rabbit_cluster", description=__doc__.splitlines()[0]
    )
    p.add_argument("action", choices=("start", "stop", "url"))
    p.add_argument("--dir", type=Path, default=Path("/tmp/mm-rabbit-cluster"))
    p.add_argument("--size", type=int, default=3)
    args = p.parse_args(argv)
    try:
        if args.action == "start":
            if _state_file(args.dir).exists():
                print(f"a cluster is recorded in {args.dir}: stop it first", file=sys.stderr)
                return 2
            args.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            cluster = RabbitCluster.loopback(args.dir, args.size)
            cluster.start()
            _save(cluster, args.dir)
            print(cluster.url)
        elif args.action == "url":
            print(_load(args.dir).url)
        else:
            if not _state_file(args.dir).exists():
                return 0
            _load(args.dir).stop()
            _state_file(args.dir).unlink()
    except (FaultEnvError, OSError, ValueError, KeyError) as error:
        print(f"rabbit_cluster {args.action}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
