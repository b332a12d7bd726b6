"""A private RabbitMQ cluster for tests: three nodes (by default) joined into one.

Each node is a ``rabbit_node.RabbitNode``: its own node name, AMQP and distribution
ports, and its own data, log and home directories under the cluster's working
directory; all share one Erlang cookie (written into each node's home, where
``rabbitmqctl`` finds it too), and a minority pauses, so a partition cannot split the
cluster. A node may run inside a network namespace (``prefix``, e.g. ``ip netns exec
h1``) under a long node name such as ``rabbit@10.99.0.11``: then no ``/etc/hosts``
entry is needed, each namespace runs its own epmd, and distribution crosses the bridge.
Nothing here touches the machine's shared broker (``rabbit@<host>`` on 5672).

``python -m benchmarks.rabbit_cluster start --dir DIR`` starts a loopback cluster and
prints its URL list (comma-separated, what ``--broker-url`` takes); ``stop --dir DIR``
stops it (``scripts/cluster.sh`` wraps both).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.rabbit_node import RabbitNode, RabbitNodeError

PARTITIONS = "cluster_partition_handling = pause_minority"
CONF = (
    "# a private test node: a minority pauses, so a partition cannot split the cluster",
    PARTITIONS,
)


@dataclass
class RabbitCluster:
    """Nodes joined to the first one, with one vhost and one user with every right on it."""

    nodes: list[RabbitNode]
    vhost: str = "mm-cluster"
    user: str = "mm-cluster"
    password: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        """Every node pauses in a minority, whoever made it (``loopback``, a test's own)."""
        for node in self.nodes:
            if PARTITIONS not in node.conf:
                node.conf = (*CONF, *node.conf)

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
        return f"amqp://{self.user}:{self.password}@{node.host}:{node.port}/{self.vhost}"

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
        "nodes": [{**asdict(node), "workdir": str(node.workdir)} for node in cluster.nodes],
    }
    path = _state_file(directory)
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)


def _node(fields: dict[str, Any]) -> RabbitNode:
    """A node from what ``_save`` wrote (its tuples as JSON lists)."""
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    values["workdir"] = Path(values["workdir"])
    return RabbitNode(**values)


def _load(directory: Path) -> RabbitCluster:
    state = json.loads(_state_file(directory).read_text())
    nodes = [_node(fields) for fields in state["nodes"]]
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
    except (RabbitNodeError, OSError, ValueError, KeyError) as error:
        print(f"rabbit_cluster {args.action}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
