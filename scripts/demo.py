"""The whole system on a demo workload, with real components.

Starts (in a temporary directory) the scheduler's Serf agent with a gossip
key, the scheduler, the local Aurora server and three different workers,
then acts as a science gateway's orchestrator:

1. an experiment chain, each step submitted when the one before succeeded:
   env_setup -> data_staging in (over HTTP) -> job_submission (Aurora) ->
   data_staging out;
2. a burst of sleep tasks with mixed priorities, some bound to the GPU worker;
3. one task no worker can take, to show ``explain``.

Prints the outcome and stops everything it started. Run it with
``bash scripts/demo.sh`` (which also starts RabbitMQ when needed).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from matchmaker.devtools.cluster import ClusterError, LocalCluster, storage_site
from matchmaker.devtools.experiment import run_experiment
from matchmaker.messages import TaskRequest
from matchmaker.wire import broker

ROWS = b"".join(b"%d,%d\n" % (i, i * i) for i in range(5000))


def experiment(cluster: LocalCluster, storage: str) -> None:
    print("experiment chain (an orchestrator submits each step when the last succeeded):")

    def submit(request: TaskRequest) -> dict[str, Any]:
        cluster.submit(request)
        row = cluster.wait_states([request.id], ("succeeded", "dead"), timeout=120)[request.id]
        if row.state != "succeeded":
            raise ClusterError(f"{request.id} ended {row.state}: {row.error}")
        print(f"  {request.id:<16} {request.type:<15} on {row.worker:<10} succeeded")
        return row.output or {}

    sha = hashlib.sha256(ROWS).hexdigest()
    steps = run_experiment("exp-1", f"{storage}/squares.csv", sha, submit, {"site": "iu"})
    print(f"  Aurora says {steps['job']['job']} {steps['job']['status']}")
    count = Path(steps["stage_out"]["path"]).read_text().strip()
    print(f"  result: {count} rows counted by the Aurora job, staged out to the gateway")


def burst(cluster: LocalCluster) -> list[str]:
    tasks = [
        TaskRequest(f"sleep-{i:02d}", "sleep", {"seconds": 0.3}, priority=i % 10) for i in range(30)
    ]
    tasks += [
        TaskRequest(f"gpu-{i}", "sleep", {"seconds": 0.3}, constraints={"gpu": {">=": 1}})
        for i in range(4)
    ]
    return cluster.submit(*tasks)


def demo(cluster: LocalCluster, storage: str) -> None:
    started = time.time()
    cluster.start_aurora()
    cluster.start_scheduler()
    own = cluster.workdir / "sandbox" / "stager"  # stage-out copies the job's output
    own.mkdir(parents=True, exist_ok=True)
    allowed = ["--stage-root", str(own), "--allow-net", "127.0.0.1/32"]  # + the storage site
    cluster.start_worker("stager", ["data_staging", "env_setup"], 4, {"site": "iu"}, extra=allowed)
    cluster.start_worker("submitter", ["job_submission", "sleep"], 4, {"site": "iu"})
    cluster.start_worker("gpu-node", ["sleep"], 4, {"site": "tacc", "gpu": 1})
    print(
        f"system up in {time.time() - started:.1f}s: RabbitMQ, Serf (encrypted gossip), "
        f"scheduler, Aurora at {cluster.aurora_url}, 3 workers\n"
    )
    cli = [sys.executable, "-m", "matchmaker"]
    common = [
        "--serf-rpc", cluster.start_agent().rpc_addr,
        "--serf-auth-key-file", str(cluster.keys_dir / "serf-rpc-auth.key"),
        "--state-dir", str(cluster.state_dir),
    ]  # fmt: skip
    subprocess.run([*cli, "workers", *common], check=False)
    print()
    experiment(cluster, storage)
    print("\na burst of 34 sleep tasks, priorities 0-9, four of them need a GPU:")
    ids = burst(cluster)
    cluster.submit(TaskRequest("impossible", "sleep", constraints={"gpu": {">=": 4}}))
    rows = cluster.wait_states(ids, timeout=120)
    by_worker: dict[str, int] = {}
    for row in rows.values():
        by_worker[row.worker or "-"] = by_worker.get(row.worker or "-", 0) + 1
    print(f"  all {len(rows)} succeeded; per worker: {by_worker}")
    gpu = {rows[i].worker or "-" for i in ids if i.startswith("gpu-")}
    print(f"  GPU tasks ran on: {', '.join(sorted(gpu))}")
    time.sleep(0.5)
    print("\nwhy is 'impossible' still waiting?")
    subprocess.run([*cli, "explain", "impossible", *common], check=False)
    print("\nstatus of the Aurora step:")
    subprocess.run([*cli, "status", "exp-1-job", *common], check=False)
    print(f"\nledger: {cluster.ledger().counts()}")


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--broker-url", default=broker.DEFAULT_URL)
    args = options.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mm-demo-"))
    (workdir / "storage").mkdir()
    (workdir / "storage" / "squares.csv").write_bytes(ROWS)
    try:
        with (
            storage_site(workdir / "storage") as storage,
            LocalCluster(broker_url=args.broker_url, workdir=workdir) as cluster,
        ):
            demo(cluster, storage)
        return 0
    except ClusterError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    finally:
        print("stopped everything the demo started")


if __name__ == "__main__":
    sys.exit(main())
