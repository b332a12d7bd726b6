"""``python -m membership keygen --out DIR``: make the Serf keys the project's processes need.

Writes ``DIR/serf-encrypt.key`` (gossip encryption, 16 random bytes base64)
and ``DIR/serf-rpc-auth.key`` (agent RPC auth), each 0600 in a 0700 directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from membership.errors import MembershipError
from membership.keys import keygen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m membership", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="write a gossip key and an RPC auth key (0600)")
    gen.add_argument("--out", type=Path, required=True, help="directory for the two key files")
    gen.add_argument("--replace", action="store_true", help="overwrite existing keys (rotation)")
    args = parser.parse_args(argv)
    try:
        encrypt, auth = keygen(args.out, replace=args.replace)
    except (MembershipError, OSError) as error:
        text = getattr(error, "strerror", None) or str(error)
        print(f"membership keygen: {text}", file=sys.stderr)
        return 1
    print(f"gossip encryption key: {encrypt}")
    print(f"RPC auth key:          {auth}")
    print(f"use: --serf-encrypt-file {encrypt} --serf-auth-file {auth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
