"""Running ``python -m matchmaker`` against a ``LocalCluster``, as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from matchmaker.devtools.cluster import ROOT, LocalCluster
from membership.keys import AUTH_FILE


def where(c: LocalCluster) -> list[str]:
    """The flags that point the CLI at the cluster's broker, agent and ledger."""
    agent = c.start_agent()
    return [
        *c._broker_args(None),
        "--serf-rpc", agent.rpc_addr,
        "--serf-auth-key-file", str(c.keys_dir / AUTH_FILE),
        "--state-dir", str(c.state_dir),
    ]  # fmt: skip


def cli(
    c: LocalCluster | None, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m matchmaker COMMAND [ACTION] <where> ARGS``: ``args`` up to the first
    option are the command words, the cluster's flags follow them."""
    words = []
    rest = list(args)
    while rest and not rest[0].startswith("-"):
        words.append(rest.pop(0))
    flags = where(c) if c is not None else []
    return subprocess.run(
        [sys.executable, "-m", "matchmaker", *words, *flags, *rest],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def cli_json(c: LocalCluster | None, *args: str) -> Any:
    done = cli(c, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
