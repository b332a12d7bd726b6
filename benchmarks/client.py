"""``python -m benchmarks.client [N] [--rounds R]``: the client library's throughput.

On a local cluster of its own (a fresh vhost on the local RabbitMQ, a scheduler and two
workers of 32 slots, the development user), ``N`` no-op ``sleep`` tasks, alternating:

- ``client``: ``Client.submit_many`` (publisher confirms), then ``wait()`` on every handle
  (outputs through ``mm.notices``);
- ``baseline``: the same work sent as the CLI sends it (``broker.send_requests``,
  transactions of 1000), completion read from the ledger.

It prints the send rate and the end-to-end rate of each run. A benchmark, not a test: it
asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.live_env import vhost_definitions
from matchmaker.client import Client
from matchmaker.devtools.cluster import LocalCluster
from matchmaker.messages import TaskRequest


def _client(url: str, n: int) -> tuple[float, float]:
    with Client(url) as client:
        specs = [{"type": "sleep", "payload": {"seconds": 0}} for _ in range(n)]
        start = time.perf_counter()
        handles = client.submit_many(specs)
        sent = time.perf_counter()
        for handle in handles:
            handle.wait(600)
        return sent - start, time.perf_counter() - start


def _baseline(cluster: LocalCluster, n: int, tag: str) -> tuple[float, float]:
    ledger = cluster.ledger()
    before = ledger.counts().get("succeeded", 0)
    requests = [TaskRequest(f"{tag}-{i}", "sleep", {"seconds": 0}) for i in range(n)]
    start = time.perf_counter()
    cluster.submit(*requests)
    sent = time.perf_counter()
    deadline = start + 600
    while ledger.counts().get("succeeded", 0) < before + n and time.perf_counter() < deadline:
        time.sleep(0.01)
    ledger.close()
    return sent - start, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="the client library's throughput")
    parser.add_argument("n", type=int, nargs="?", default=5000, help="tasks per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating pairs of runs")
    args = parser.parse_args()
    vhost = f"mm-bench-client-{uuid.uuid4().hex[:6]}"
    subprocess.run(
        ["rabbitmqctl", "-q", "import_definitions"],
        input=vhost_definitions([vhost]), text=True, check=True, capture_output=True,
    )  # fmt: skip
    url = f"amqp://matchmaker:matchmaker@127.0.0.1:5672/{vhost}"
    cluster = LocalCluster(broker_url=url, workdir=Path(tempfile.mkdtemp(prefix="mm-bench-")))
    try:
        cluster.start_scheduler()
        for name in ("b1", "b2"):
            cluster.start_worker(name, ["sleep"], 32)
        _client(url, 10)  # warm up
        for n in range(args.rounds):
            for mode in ("client", "baseline"):
                if mode == "client":
                    send, total = _client(url, args.n)
                else:
                    send, total = _baseline(cluster, args.n, f"r{n}")
                print(
                    f"{mode:<8} N={args.n}: sent {args.n / send:,.0f}/s, "
                    f"all done at {total:.2f}s ({args.n / total:,.0f} tasks/s end to end)"
                )
    finally:
        cluster.stop()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


if __name__ == "__main__":
    main()
