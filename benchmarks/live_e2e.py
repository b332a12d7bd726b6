"""``e2e``: no-op completions per second, matchmaker vs Celery on the same broker and cores.

matchmaker: the scheduler and two worker processes (``slots`` each) on a
fresh vhost; the client publishes N ``sleep`` tasks (0 s) to ``mm.requests``
in transactions of 1,000 while everything runs. Rate = N / (last
``updated_at`` of a succeeded task - first ``submitted_at``), from the
ledger: the result is recorded when the scheduler has written it. The rate
from the client's first publish is reported as well.

Celery (``benchmarks.celery_app``): one worker, prefork pool of 2,
``acks_late``, prefetch multiplier 1, results ignored, on its own vhost of
the same broker. The task appends a byte to a file; rate = N / (mtime of the
file when it holds N bytes - first publish). The matchmaker cluster is
stopped before Celery starts, so the two never share the cores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from benchmarks.live_cpu import Meter, broker_pid
from benchmarks.live_env import (
    Env,
    LedgerView,
    LiveError,
    describe_rounds,
    publish_requests,
    request_body,
    rounds,
    sleep_request,
    verdict,
    wait_for,
)
from matchmaker.devtools.cluster import ROOT

CELERY_QUEUE_TYPES = ("quorum", "classic")


def run(env: Env, tasks: int, slots: int, celery: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"tasks": tasks, "slots": slots, "workers": 2}
    result["matchmaker"] = _matchmaker(env, tasks, slots)
    mm = result["matchmaker"]["rate"]
    if celery:
        result["celery"] = {qt: _celery(env, tasks, qt) for qt in CELERY_QUEUE_TYPES}
        best = max(c["rate"] for c in result["celery"].values())
        result["ratio"] = mm / best
        result["targets"] = {
            "vs_celery": verdict(mm >= best, "matchmaker >= Celery (its faster queue type)")
        }
    return result


def _matchmaker(env: Env, tasks: int, slots: int) -> dict[str, Any]:
    cluster = env.cluster("e2e")
    cluster.start_scheduler()
    for name in ("e2e-a", "e2e-b"):
        cluster.start_worker(name, ["sleep"], slots)
    ledger = LedgerView(cluster)
    env.stack.callback(ledger.close)
    assert cluster.scheduler is not None
    pids = {"scheduler": cluster.scheduler.popen.pid, "rabbitmq": broker_pid()}
    pids.update({n: p.popen.pid for n, p in cluster.workers.items()})
    meter = Meter(pids).start()
    first_publish = publish_requests(
        cluster.broker_url, (request_body(sleep_request(f"e{i:07d}")) for i in range(tasks))
    )
    published = time.time()
    wait_for(
        lambda: ledger.counts().get("succeeded", 0),
        tasks,
        max(120.0, tasks / 100),
        "every task to succeed",
        env.bar(tasks, "e2e matchmaker: succeeded"),
        poll=0.2,
        watch=[cluster.scheduler, *cluster.workers.values()],
    )
    cpu = meter.stop()
    (first, last, finished, n, workers) = ledger.rows(
        "SELECT MIN(submitted_at), MAX(updated_at), MAX(finished_at), COUNT(*),"
        " COUNT(DISTINCT worker) FROM tasks WHERE state = 'succeeded'"
    )[0]
    attempts = ledger.rows("SELECT MAX(attempt) FROM tasks")[0][0]
    spent = rounds(cluster, first, last + 1.0)  # a round logs after its commit
    ledger.close()
    cluster.stop()
    return {
        "round_interval": env.round_interval,
        "succeeded": n,
        "workers_used": workers,
        "max_attempt": attempts,
        "rate": tasks / (last - first),
        "rate_from_publish": tasks / (last - first_publish),
        "publish_s": published - first_publish,
        "window_s": last - first,
        "last_finish_to_recorded_s": last - finished,
        "cpu_cores": cpu,
        "steal_cores": meter.steal,
        "round_time": spent,
    }


def _celery(env: Env, tasks: int, queue_type: str) -> dict[str, Any]:
    url = env.vhost(f"celery-{queue_type}")
    work = env.workdir / f"celery-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    work.mkdir(parents=True, exist_ok=True)
    counter, ready, log = work / "count", work / "ready", work / "celery.log"
    counter.write_bytes(b"")
    environment = {
        **os.environ,
        "MM_CELERY_BROKER": url,
        "MM_CELERY_COUNTER": str(counter),
        "MM_CELERY_READY": str(ready),
        "MM_CELERY_QUEUE_TYPE": queue_type,
    }
    args = [
        sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
        "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", "bench@%h",
    ]  # fmt: skip
    with open(log, "ab") as out:
        worker = subprocess.Popen(
            args,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    env.stack.callback(_stop_group, worker)
    wait_for(lambda: int(ready.exists() or worker.poll() is not None), 1, 60, "Celery to start")
    if worker.poll() is not None:
        raise LiveError(f"the Celery worker exited early; see {log}")

    meter = Meter({"celery": worker.pid, "rabbitmq": broker_pid()}).start()
    sent = subprocess.run(
        [sys.executable, "-m", "benchmarks.celery_app", str(tasks)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=max(120.0, tasks / 200),
    )
    if sent.returncode != 0:
        raise LiveError(f"publishing the Celery tasks failed: {sent.stderr.strip()[-500:]}")
    first = float(sent.stdout.strip().splitlines()[-1])
    published = time.time()
    wait_for(
        lambda: counter.stat().st_size,
        tasks,
        max(120.0, tasks / 100),
        "every Celery task to complete",
        env.bar(tasks, f"e2e celery ({queue_type}): completed"),
        poll=0.05,
    )
    last = counter.stat().st_mtime
    cpu = meter.stop()
    time.sleep(0.5)
    completed = counter.stat().st_size
    _stop_group(worker)
    return {
        "completed": completed,
        "rate": tasks / (last - first),
        "publish_s": published - first,
        "window_s": last - first,
        "queue_type": queue_type,
        "cpu_cores_parent": cpu,
    }


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def table(r: dict[str, Any]) -> list[str]:
    mm = r["matchmaker"]
    lines = [
        f"{r['tasks']:,} no-op tasks, 2 worker processes",
        f"{'matchmaker (' + str(r['slots']) + ' slots each), submitted -> recorded':<52} "
        f"{mm['rate']:>8,.0f} /s   (from first publish {mm['rate_from_publish']:,.0f} /s; "
        f"{mm['succeeded']:,} succeeded, max attempt {mm['max_attempt']})",
    ]
    for c in r.get("celery", {}).values():
        lines.append(
            f"{'celery (prefork 2, acks_late, prefetch 1, ' + c['queue_type'] + ')':<52} "
            f"{c['rate']:>8,.0f} /s   ({c['completed']:,} completions counted)"
        )
    if "ratio" in r:
        lines.append(f"matchmaker / best celery = {r['ratio']:.2f}x")
    lines.append(
        f"matchmaker, {mm['window_s']:.2f} s window: {describe_rounds(mm['round_time'])}; "
        f"CPU cores used: {mm['cpu_cores']}; the machine's steal: {mm['steal_cores']:.3f} cores"
    )
    return lines
