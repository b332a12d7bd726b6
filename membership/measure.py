"""Measure how fast the inventory follows real Serf agents (``python -m membership.measure``).

Starts a scheduler agent with an Inventory on it, a few bystander workers,
then times, from the action to the inventory's change callback:

- ``kill -9`` of a worker's agent until the worker is removed (member-failed);
- a tag change over RPC until the updated worker is in the inventory;
- a graceful leave (SIGINT) until the worker is removed (member-leave).

Prints the median, min and max of each over ``--runs`` runs; ``--profile`` sets
every agent's timing (``local`` as on one host, ``lan`` as between hosts).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from membership.agent import PROFILES, SerfAgent
from membership.inventory import Change, Inventory
from membership.keys import generate_auth_key, generate_encrypt_key
from membership.tags import encode_worker_tags


class Clock:
    """When each (name, kind) change reached the inventory's callback."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.cond = threading.Condition()

    def __call__(self, change: Change) -> None:
        with self.cond:
            self.seen[(change.name, change.kind)] = time.monotonic()
            self.cond.notify_all()

    def wait(self, name: str, *kinds: str, timeout: float = 60.0) -> tuple[float, str]:
        """When the first change of one of ``kinds`` for ``name`` arrived, and which kind."""

        def arrived() -> list[str]:
            return [kind for kind in kinds if (name, kind) in self.seen]

        with self.cond:
            if not self.cond.wait_for(arrived, timeout):
                raise SystemExit(
                    f"measure: no {'/'.join(kinds)} change for {name} in {timeout:g} s"
                )
            kind = arrived()[0]
            return self.seen.pop((name, kind)), kind


def _summary(label: str, samples: Samples) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:8.1f} ms"

    times = samples.seconds
    kinds = ", ".join(f"{k} x{samples.kinds.count(k)}" for k in sorted(set(samples.kinds)))
    return (
        f"{label:<42} median {ms(statistics.median(times))}   "
        f"min {ms(min(times))}   max {ms(max(times))}   (n={len(times)}: {kinds})"
    )


@dataclass
class Samples:
    """Latencies in seconds, and the change kind each run ended with."""

    seconds: list[float]
    kinds: list[str]


def measure(runs: int, root: Path, resync: float, profile: str = "local") -> dict[str, Samples]:
    agents: list[SerfAgent] = []
    encrypt, auth = generate_encrypt_key(), generate_auth_key()  # this run's own pool

    def start(node: str, tags: dict[str, str], join: list[str]) -> SerfAgent:
        agent = SerfAgent(
            node,
            tags=tags,
            join=join,
            workdir=root / node,
            encrypt_key=encrypt,
            rpc_auth=auth,
            profile=profile,
        )
        agents.append(agent)
        return agent.start()

    def worker(name: str) -> SerfAgent:
        return start(name, encode_worker_tags(name, ["sleep"], 2), [sched.bind_addr])

    clock = Clock()
    try:
        sched = start("sched", {"role": "scheduler"}, [])
        for i in range(3):
            worker(f"bystander{i}")
        inventory = Inventory(sched.rpc_addr, auth, on_change=clock, resync=resync).start()
        results: dict[str, list[float]] = {"kill": [], "tags": [], "leave": []}
        kinds: dict[str, list[str]] = {"kill": [], "tags": [], "leave": []}

        def record(what: str, began: float, name: str, *expected: str) -> None:
            at, kind = clock.wait(name, *expected)
            results[what].append(at - began)
            kinds[what].append(kind)

        try:
            tagged = worker("tagged")
            clock.wait("tagged", "joined")
            with tagged.rpc() as rpc:
                for i in range(runs):
                    time.sleep(random.uniform(0.5, 1.5))  # not in step with the resync timer
                    began = time.monotonic()
                    rpc.tags({"slots": str(3 + i)})
                    record("tags", began, "tagged", "updated")
            for i in range(runs):
                agent = worker(f"leaver{i}")
                clock.wait(agent.node, "joined")
                time.sleep(random.uniform(0.5, 1.5))
                began = time.monotonic()
                agent.stop()
                record("leave", began, agent.node, "left", "failed")
            for i in range(runs):
                agent = worker(f"victim{i}")
                clock.wait(agent.node, "joined")
                time.sleep(random.uniform(0.5, 1.5))
                began = time.monotonic()
                agent.kill()
                record("kill", began, agent.node, "failed", "left")
        finally:
            inventory.stop()
    finally:
        for agent in reversed(agents):
            agent.kill()
    return {what: Samples(results[what], kinds[what]) for what in results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m membership.measure", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs of each measurement (default 5)")
    parser.add_argument(
        "--resync", type=float, default=0.5, help="inventory resync interval, 0 = events only"
    )
    parser.add_argument(
        "--profile", default="local", choices=PROFILES, help="every agent's Serf timing profile"
    )
    args = parser.parse_args(argv)
    version = subprocess.run(["serf", "version"], capture_output=True, text=True).stdout
    print(
        f"serf {version.splitlines()[0] if version else '?'}, -profile={args.profile}, loopback, "
        f"4 agents + 1 per run, {args.runs} runs each, inventory resync {args.resync:g} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="mm-measure-") as root:
        results = measure(args.runs, Path(root), args.resync, args.profile)
    print(_summary("tag change (RPC tags) -> inventory update", results["tags"]))
    print(_summary("graceful leave (SIGINT) -> removed", results["leave"]))
    print(_summary("kill -9 -> removed (member-failed)", results["kill"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
