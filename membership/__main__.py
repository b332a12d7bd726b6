"""``python -m membership``: make the Serf keys, or run a keyed agent (the scheduler's).

- ``keygen --out DIR``: writes ``DIR/serf-encrypt.key`` (gossip encryption, 16
  random bytes base64) and ``DIR/serf-rpc-auth.key`` (agent RPC auth), each
  0600 in a 0700 directory.
- ``agent --node NAME --bind ADDR --rpc ADDR [--tag k=v] [--join ADDR]``: runs a
  ``serf agent`` in the foreground with both keys in its 0600 config file (not
  on its command line), until SIGINT/SIGTERM, then leaves the pool.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from membership.agent import SerfAgent
from membership.errors import MembershipError
from membership.keys import AUTH_FILE, ENCRYPT_FILE, keygen, resolve
from membership.rpc import split_addr


def _keygen(args: argparse.Namespace) -> int:
    encrypt, auth = keygen(args.out, replace=args.replace)
    print(f"gossip encryption key: {encrypt}")
    print(f"RPC auth key:          {auth}")
    print(f"use: --serf-encrypt-file {encrypt} --serf-auth-file {auth}")
    return 0


def _pair(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise MembershipError(f"{what} {text!r} must look like key=value")
    return key, value


def _addr(text: str, what: str) -> tuple[str, int]:
    try:
        return split_addr(text)
    except ValueError:
        raise MembershipError(f"{what} {text!r} must be host:port, e.g. 127.0.0.1:7946") from None


def _agent(args: argparse.Namespace) -> int:
    keys = resolve(
        encrypt_file=args.serf_encrypt_file or (args.keys / ENCRYPT_FILE if args.keys else None),
        auth_file=args.serf_auth_file or (args.keys / AUTH_FILE if args.keys else None),
        insecure=args.insecure,
    )
    bind_host, bind_port = _addr(args.bind, "--bind")
    rpc_host, rpc_port = _addr(args.rpc, "--rpc")
    agent = SerfAgent(
        args.node,
        tags=dict(_pair(t, "--tag") for t in args.tag),
        bind_host=bind_host,
        bind_port=bind_port,
        rpc_host=rpc_host,
        rpc_port=rpc_port,
        profile=args.profile,
        encrypt_key=keys.encrypt,
        rpc_auth=keys.auth,
        join=args.join,
        workdir=args.state_dir / args.node,
        insecure=keys.insecure,
        advertise=args.advertise,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    print(f"membership agent: {args.node} up, gossip {agent.bind_addr}, RPC {agent.rpc_addr}")
    print(f"membership agent: config and log in {agent.workdir}", flush=True)
    while not stopping.wait(0.5):
        if not agent.running:
            print(f"membership agent: the agent exited; log tail:\n{agent.log_tail(5)}")
            return 1
    agent.stop()
    print("membership agent: left the pool", flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m membership", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="write a gossip key and an RPC auth key (0600)")
    gen.add_argument("--out", type=Path, required=True, help="directory for the two key files")
    gen.add_argument("--replace", action="store_true", help="overwrite existing keys (rotation)")
    gen.set_defaults(func=_keygen)
    run = sub.add_parser("agent", help="run a Serf agent with its keys in a 0600 config file")
    run.add_argument("--node", required=True, help="node name (the scheduler's: scheduler)")
    run.add_argument("--bind", default="127.0.0.1:7946", help="gossip address (127.0.0.1:7946)")
    run.add_argument("--rpc", default="127.0.0.1:7373", help="RPC address (127.0.0.1:7373)")
    run.add_argument("--tag", action="append", default=[], metavar="K=V", help="repeatable")
    run.add_argument("--join", action="append", default=[], metavar="ADDR", help="repeatable")
    run.add_argument("--profile", default="local", choices=("lan", "wan", "local"))
    run.add_argument("--advertise", metavar="ADDR", help="address other members reach it at")
    run.add_argument("--keys", type=Path, help="directory written by keygen")
    run.add_argument("--serf-encrypt-file", type=Path, help="gossip key file (or --keys)")
    run.add_argument("--serf-auth-file", type=Path, help="RPC auth key file (or --keys)")
    run.add_argument("--insecure", action="store_true", help="no gossip encryption, no RPC auth")
    run.add_argument(
        "--state-dir", type=Path, default=Path("serf"), help="config and log go in DIR/<node>"
    )
    run.set_defaults(func=_agent)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except MembershipError as error:
        print(f"membership {args.command}: {str(error).splitlines()[0]}", file=sys.stderr)
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"membership {args.command}: {error.strerror or error}{where}", file=sys.stderr)
    return 1 if args.command == "keygen" else 2


if __name__ == "__main__":
    sys.exit(main())
