"""Real Serf agents on loopback for the membership tests: a cluster fixture that cleans up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from membership.agent import SerfAgent
from membership.tags import encode_worker_tags

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float = 45.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout``.

    The default deadline is generous on purpose: with ``-profile=local`` Serf now and
    then misses a gossip broadcast, and the state then arrives with the next push/pull
    sync, 10-25 s later.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Cluster:
    """A scheduler agent (``role=scheduler``) plus worker agents that join it."""

    def __init__(self, root: Path, encrypt_key: str | None = None, rpc_auth: str | None = None):
        self.root = root
        self.encrypt_key = encrypt_key
        self.rpc_auth = rpc_auth
        self.agents: list[SerfAgent] = []
        self.scheduler = self.agent("sched", {"role": "scheduler"}, rpc_auth=rpc_auth)

    def agent(self, node: str, tags: dict[str, str], **options: object) -> SerfAgent:
        """Start an agent joined to the scheduler's (unless it is the first)."""
        options.setdefault("encrypt_key", self.encrypt_key)
        options.setdefault("insecure", not (options.get("encrypt_key") and options.get("rpc_auth")))
        if self.agents:
            options.setdefault("join", [self.scheduler.bind_addr])
        agent = SerfAgent(node, tags=tags, workdir=self.root / node, **options)  # type: ignore[arg-type]
        self.agents.append(agent)
        return agent.start()

    def worker(
        self, name: str, caps: tuple[str, ...] = ("sleep",), slots: int = 2, **attrs: object
    ):
        return self.agent(name, encode_worker_tags(name, caps, slots, attrs))

    def close(self) -> None:
        for agent in reversed(self.agents):
            agent.kill()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """A factory of clusters; every agent started through them is killed afterwards."""
    made: list[Cluster] = []

    def make(**options: str | None) -> Cluster:
        # A failed start kills its own agent, so only built clusters need closing.
        made.append(Cluster(tmp_path / f"cluster{len(made)}", **options))
        return made[-1]

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A plain cluster: its scheduler agent, no encryption, no RPC auth."""
    return make_cluster()
