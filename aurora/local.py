"""A local Aurora-compatible scheduler: ``python -m aurora.local --port 8081``.

Serves Aurora's Thrift API (the subset in ``api.thrift``) at ``/api`` over
HTTP, in TJSON or TBinary, and runs each job's Thermos processes as local
subprocesses in a per-task sandbox. It is the embedded default for the demo
and the tests; point ``AuroraClient`` at a real Aurora to use that instead.

In-process use: ``aurora = LocalAurora(port=0); url = aurora.start(); ...;
aurora.stop()`` (also a context manager).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType, TracebackType

from aurora.scheduler import Capacity, LocalScheduler
from aurora.server import ApiServer


class LocalAurora:
    """The local scheduler behind its HTTP API server."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        sandbox_root: Path | None = None,
        capacity: Capacity | None = None,
        cluster: str = "local",
    ) -> None:
        self._tmp = None if sandbox_root else tempfile.TemporaryDirectory(prefix="aurora-local-")
        root = sandbox_root or Path(self._tmp.name)  # type: ignore[union-attr]
        root.mkdir(parents=True, exist_ok=True)
        self.scheduler = LocalScheduler(root, capacity, cluster)
        self.server = ApiServer(self.scheduler, host, port)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> str:
        """Start serving in the background; return the base URL (the API is at ``/api``)."""
        return self.server.start()

    def stop(self) -> None:
        """Stop serving, kill running tasks, remove a temporary sandbox root."""
        self.server.stop()
        self.scheduler.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalAurora:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aurora.local", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on, 0 = any (8081)")
    parser.add_argument("--sandbox-root", type=Path, help="where task sandboxes go (a temp dir)")
    parser.add_argument("--cluster", default="local", help="cluster name in ServerInfo (local)")
    parser.add_argument("--cpus", type=float, help="CPUs to offer (all of this machine's)")
    parser.add_argument("--ram-mb", type=int, help="RAM to offer in MiB (this machine's)")
    parser.add_argument("--disk-mb", type=int, help="disk to offer in MiB (free disk)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every task transition")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    capacity = None
    if args.cpus or args.ram_mb or args.disk_mb:
        machine = Capacity.of_machine(args.sandbox_root or Path(tempfile.gettempdir()))
        capacity = Capacity(
            args.cpus or machine.cpus,
            args.ram_mb or machine.ram_mb,
            args.disk_mb or machine.disk_mb,
        )
    try:
        aurora = LocalAurora(args.host, args.port, args.sandbox_root, capacity, args.cluster)
    except OSError as e:
        print(f"aurora.local: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = aurora.start()
    print(f"aurora.local: ready at {url} (Thrift API at {url}/api)", flush=True)
    while not stopping.wait(0.5):
        pass
    aurora.stop()
    print("aurora.local: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
