"""``python -m workers.measure``: no-op tasks per second through one real worker process.

For each slot count: a scratch vhost (made with ``rabbitmqctl``, deleted after)
or the ``--broker-url`` given, N no-op ``sleep`` dispatches published straight
to the worker's queue, then ``python -m workers --no-serf`` started on it; the
rate is counted on ``mm.results`` between the first and the last final
result (start-up excluded). Every dispatch is acked only after its result is
committed, so this is the durable, at-least-once rate.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from matchmaker.messages import TaskDispatch, decode_results, encode
from matchmaker.wire import amqp
from matchmaker.wire.broker import PERSISTENT, RESULTS, declare_core, declare_worker

USER = "matchmaker"


@contextlib.contextmanager
def scratch_vhost(base_url: str | None) -> Iterator[str]:
    if base_url:
        yield base_url
        return
    vhost = f"mm-measure-{uuid.uuid4().hex[:8]}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            [*ctl, "set_permissions", "-p", vhost, USER, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://{USER}:{USER}@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([*ctl, "delete_vhost", vhost], capture_output=True)


def measure(url: str, slots: int, count: int) -> tuple[float, int]:
    """(final results per second, running reports seen) for ``count`` no-op tasks."""
    name = f"bench-{uuid.uuid4().hex[:6]}"
    connection = amqp.plain(url)
    channel = connection.channel()
    declare_core(channel)
    queue = declare_worker(channel, name)
    deadline = time.time() + 3600
    for i in range(count):
        body = encode(TaskDispatch(f"{name}-{i}", 1, "sleep", {"seconds": 0}, deadline))
        channel.basic_publish("", queue, body, PERSISTENT)
    channel.basic_qos(prefetch_count=1000)
    finals = running = 0
    first = last = 0.0

    def on_result(ch: object, method: object, props: object, body: bytes) -> None:
        nonlocal finals, running, first, last
        for result in decode_results(body).items:
            if result.state == "running":
                running += 1
                continue
            finals += 1
            last = time.perf_counter()
            if finals == 1:
                first = last
            if finals == count:
                channel.stop_consuming()

    channel.basic_consume(RESULTS, on_result, auto_ack=True)
    env = {**os.environ, "MM_BROKER_URL": url}
    argv = [sys.executable, "-m", "workers", "--name", name, "--caps", "sleep"]
    argv += ["--slots", str(slots), "--no-serf", "--log-level", "WARNING"]
    argv += ["--sandbox", tempfile.gettempdir()]
    worker = subprocess.Popen(argv, env=env, cwd=Path(__file__).resolve().parent.parent)
    try:
        channel.start_consuming()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        channel.queue_delete(queue)
        connection.close()
    return (finals - 1) / (last - first), running


def main(argv: Sequence[str] | None = None) -> int:
    about = "No-op tasks per second through one real worker process."
    p = argparse.ArgumentParser(prog="python -m workers.measure", description=about)
    p.add_argument("--count", type=int, default=20000, help="tasks per run (default 20000)")
    p.add_argument("--slots", default="1,4,16,64", help="slot counts to try (default 1,4,16,64)")
    p.add_argument("--broker-url", help="use this (scratch!) vhost instead of making one")
    args = p.parse_args(argv)
    print(f"{'slots':>6} {'tasks':>7} {'tasks/s':>9} {'running reports':>16}")
    with scratch_vhost(args.broker_url) as url:
        for slots in (int(s) for s in args.slots.split(",")):
            rate, running = measure(url, slots, args.count)
            print(f"{slots:>6} {args.count:>7} {rate:>9.0f} {running:>16}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
