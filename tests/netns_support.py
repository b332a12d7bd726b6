"""Hosts on this machine for multi-host tests: Linux network namespaces on one bridge.

``NetLab`` makes a bridge in the root namespace (no address on it: the test's
addresses exist inside the namespaces only) and, per ``Host``, a namespace with
loopback up and one veth pair whose outer end is on the bridge and whose inner
end, ``eth0``, has an address in ``SUBNET``. A process runs on a host behind its
``prefix`` (``ip netns exec <ns>``). ``Host.cut()`` takes the outer end down (the
host is off the network, its processes keep running); ``Host.restore()`` brings it
back; ``Host.kill_all()`` is ``kill -9`` of every process in the namespace.

Everything is named after the creating process (``mmt<pid>``); ``close()`` kills
every process left in the namespaces and deletes them and the bridge, and
``sweep()`` removes what a run killed outright left behind (its process gone).
Needs root and the ``ip`` tool; ``available()`` says why not otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

SUBNET = "10.213.0"  # /24, inside the namespaces only
PREFIX = "mmt"


class NetLabError(RuntimeError):
    """A namespace, link or address could not be made; the text has the command."""


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetLabError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def available() -> str | None:
    """None if namespaces can be made here, else why not (one sentence)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip tool is missing (apt-get install iproute2)"
    probe = f"{PREFIX}probe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (NetLabError, OSError) as error:
        return f"cannot make a network namespace: {error}"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace(ns: str) -> None:
    """kill -9 every process in ``ns``, until none is left (bounded)."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def sweep() -> list[str]:
    """Delete namespaces and bridges of earlier runs whose process is gone."""
    removed = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if match and not _alive(int(match.group(1))):
            _kill_namespace(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).splitlines():
        match = re.search(rf" ({PREFIX}b(\d+)):", line)
        if match and not _alive(int(match.group(2))):
            _ip("link", "del", match.group(1), check=False)
            removed.append(match.group(1))
    return removed


@dataclass
class Host:
    """One namespace on the lab's bridge."""

    name: str
    ns: str
    address: str
    outer: str  # the veth end on the bridge, in the root namespace

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns)

    def run(self, *command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *command], capture_output=True, text=True, timeout=timeout
        )

    def cut(self) -> None:
        """Off the network: the bridge's end of its link goes down."""
        _ip("link", "set", self.outer, "down")

    def restore(self) -> None:
        _ip("link", "set", self.outer, "up")

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.ns, check=False).split() if p.isdigit()]

    def kill_all(self) -> None:
        """kill -9 of every process on the host (a host that crashed, its network up)."""
        _kill_namespace(self.ns)


@dataclass
class NetLab:
    """A bridge and the hosts on it; ``close()`` (or the context manager) removes all."""

    tag: str = field(default_factory=lambda: str(os.getpid()))
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge: str = ""

    def __post_init__(self) -> None:
        sweep()
        self.bridge = f"{PREFIX}b{self.tag}"
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def add(self, name: str) -> Host:
        """A new host ``name`` at the next address of ``SUBNET``."""
        index = len(self.hosts) + 1
        ns = f"{PREFIX}{self.tag}-{name}"
        outer, inner = f"{PREFIX}v{self.tag}n{index}", f"{PREFIX}i{self.tag}n{index}"
        host = Host(name, ns, f"{SUBNET}.{10 + index}", outer)
        self.hosts[name] = host
        _ip("netns", "add", ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        inside = ("-n", ns)
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "link", "set", inner, "name", "eth0")
        _ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip(*inside, "link", "set", "eth0", "up")
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            _kill_namespace(host.ns)
        for host in self.hosts.values():
            _ip("netns", "del", host.ns, check=False)
            _ip("link", "del", host.outer, check=False)
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)
        self.hosts.clear()

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
