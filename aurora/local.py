"""A local Aurora-compatible scheduler: ``python -m aurora.local --port 8081``.

Serves Aurora's Thrift API (the subset in ``api.thrift``) at ``/api`` over
HTTP, in TJSON or TBinary, and runs each job's Thermos processes as local
subprocesses in a per-task sandbox. It is the embedded default for the demo
and the tests; point ``AuroraClient`` at a real Aurora to use that instead.

Every API call needs the server's bearer token (``aurora.auth``): one given
with ``--token-file`` (or ``MM_AURORA_TOKEN_FILE``), else the one generated at
the first start into ``<state-dir>/api-token`` (0600); the path is printed at
start-up. Listening beyond loopback needs an explicitly given token. Task
processes get a minimal environment of their own, not the server's.

In-process use: ``aurora = LocalAurora(port=0); url = aurora.start(); ...;
aurora.stop()`` (also a context manager); ``aurora.token`` is its token.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType, TracebackType

from aurora.auth import ENV_TOKEN_FILE, TOKEN_FILE, TokenError, read_token_file, state_token
from aurora.errors import AuroraError
from aurora.scheduler import Capacity, LocalScheduler
from aurora.server import ApiServer


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``), not a wider one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalAurora:
    """The local scheduler behind its HTTP API server, which requires ``token``.

    Without ``token`` the one in ``<state_dir>/api-token`` is used (made at the
    first start); ``state_dir`` defaults to a temporary directory. A host beyond
    loopback is refused unless ``token`` is given.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        sandbox_root: Path | None = None,
        capacity: Capacity | None = None,
        cluster: str = "local",
        *,
        state_dir: Path | None = None,
        token: str | None = None,
    ) -> None:
        if token is None and not is_loopback(host):
            raise TokenError(
                f"refusing to listen on {host or 'every address'} without an explicitly "
                "configured token: pass --token-file PATH (a 0600 file holding the token) or "
                "listen on 127.0.0.1"
            )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        root = sandbox_root or self._scratch() / "sandboxes"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.token_file: Path | None = None
        if token is None:
            token, self.token_file = state_token(state_dir or self._scratch() / "state")
        self.token = token
        self.scheduler = LocalScheduler(root, capacity, cluster)
        self.server = ApiServer(self.scheduler, token, host, port)

    def _scratch(self) -> Path:
        """A temporary directory of this server's own, removed by ``stop()``."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aurora-local-")
        return Path(self._tmp.name)

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


DEFAULT_STATE = (
    Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "matchmaker-aurora"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aurora.local", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on, 0 = any (8081)")
    parser.add_argument("--sandbox-root", type=Path, help="where task sandboxes go (a temp dir)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help=f"where the generated API token is kept, 0700 ({DEFAULT_STATE})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get(ENV_TOKEN_FILE) or None,
        help=f"a 0600 file holding the API token to require (default: ${ENV_TOKEN_FILE}, else "
        f"<state-dir>/{TOKEN_FILE}, generated at the first start)",
    )
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
        token = read_token_file(args.token_file) if args.token_file else None
        aurora = LocalAurora(
            args.host,
            args.port,
            args.sandbox_root,
            capacity,
            args.cluster,
            state_dir=args.state_dir,
            token=token,
        )
    except AuroraError as e:
        print(f"aurora.local: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"aurora.local: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = aurora.start()
    where = aurora.token_file or args.token_file
    print(f"aurora.local: API token in {where} (send Authorization: Bearer <token>)", flush=True)
    print(f"aurora.local: ready at {url} (Thrift API at {url}/api)", flush=True)
    while not stopping.wait(0.5):
        pass
    aurora.stop()
    print("aurora.local: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
