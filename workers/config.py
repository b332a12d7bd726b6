"""A worker's configuration: who it is, what it runs, where it connects.

``WorkerConfig`` is plain data, validated once at construction so a bad value
is a one-sentence ``ValueError`` before anything starts. ``SerfConfig`` says
how the worker advertises itself: join an existing agent over RPC (``rpc``)
or start its own agent (``bind``, ``rpc_bind``, ``join``, keys, the timing
``profile`` and the ``advertise`` address other hosts reach it at).
``stage_roots`` and ``allow_net`` are what the worker lets its tasks reach:
the directories ``file://`` sources may come from, and the networks fetched
from although not public (both empty by default: no local file, no loopback,
private or link-local address). ``commands`` are the ``exec`` driver's named
command lines (``workers.tasks.execute``; none by default).

``read_file`` reads the worker's TOML file (``--config``): ``tasks``, a list of
modules to import (as ``--tasks``), ``[commands]``, name = an argument list
whose first item is an absolute path, e.g. ``align = ["/usr/bin/bwa", "mem"]``,
and ``[limits]``, what every command may use (``memory = "2G"``, ``cpu = 3600``).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from matchmaker.messages import NAME
from matchmaker.wire.broker import DEFAULT_URL, BrokerError, check_urls
from membership.tags import MAX_SPEED, MIN_SPEED
from workers.tasks.base import Network

MODES = ("push", "pull")
MAX_SLOTS = 1024
MAX_BROKER_WAIT = 86_400.0  # a day: longer is a broker that is not coming back
_ATTR_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
RESERVED_ATTRS = frozenset({"role", "q", "caps", "slots", "name", "mode"})


@dataclass(frozen=True)
class SerfConfig:
    """Either ``rpc`` (an existing agent to tag) or the settings of an agent to start."""

    rpc: str | None = None
    bind: str | None = None
    rpc_bind: str | None = None
    join: tuple[str, ...] = ()
    encrypt: str | None = None
    auth: str | None = None
    profile: str = "local"  # Serf's timing: local (one host), lan, wan
    advertise: str | None = None  # the gossip address other hosts reach the agent at
    insecure: bool = False  # no gossip encryption / RPC auth (``--insecure``)


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    capabilities: tuple[str, ...]
    slots: int = 1
    attributes: dict[str, str] = field(default_factory=dict)
    mode: Literal["push", "pull"] = "push"
    broker_url: str = DEFAULT_URL
    broker_ca: str = ""
    broker_cert: str = ""
    broker_key: str = ""
    serf: SerfConfig | None = None
    sandbox: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "mm-sandbox")
    aurora_url: str = "http://127.0.0.1:8081"
    grace: float = 30.0
    broker_wait: float = 60.0  # at start-up, seconds to keep trying an unreachable broker
    perf: float = 1.0  # advertised relative speed, the scheduler's prior
    requeue_delay: float = 0.05
    stage_roots: tuple[Path, ...] = ()
    allow_net: tuple[Network, ...] = ()
    commands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(
                f"worker name {self.name!r} must be 1-128 letters, digits and _ . : @ -"
            )
        if not self.capabilities:
            raise ValueError("a worker needs at least one capability (--caps)")
        for cap in self.capabilities:
            if not NAME.fullmatch(cap):
                raise ValueError(f"capability {cap!r} is not a valid task type name")
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"slots must be from 1 to {MAX_SLOTS} (got {self.slots})")
        for key in self.attributes:
            if not _ATTR_KEY.fullmatch(key) or key in RESERVED_ATTRS:
                raise ValueError(
                    f"attribute name {key!r} must be a letter then up to 31 letters, digits, "
                    f"_ . - and not one of {', '.join(sorted(RESERVED_ATTRS))}"
                )
        if self.mode not in MODES:
            raise ValueError(f"mode must be push or pull (got {self.mode!r})")
        if not (math.isfinite(self.perf) and MIN_SPEED <= self.perf <= MAX_SPEED):
            raise ValueError(f"perf must be a number from 1/64 to 64 (got {self.perf})")
        if not self.grace >= 0:
            raise ValueError("grace must be a number of seconds >= 0")
        if not 0 <= self.broker_wait <= MAX_BROKER_WAIT:
            raise ValueError(f"broker wait must be from 0 to {MAX_BROKER_WAIT:g} seconds")
        for root in self.stage_roots:
            if not root.is_absolute() or not root.is_dir():
                raise ValueError(f"stage root {str(root)!r} must be an existing absolute directory")
        if "exec" in self.capabilities and not self.commands:
            raise ValueError(
                "--caps exec needs named commands: a [commands] table in the --config file"
            )
        try:  # last: the worker's own settings are reported before its environment's
            check_urls(self.broker_url)
        except BrokerError as error:
            raise ValueError(str(error)) from None

    @functools.cached_property  # asked for every task
    def sandbox_dir(self) -> Path:
        """This worker's own sandbox: ``<sandbox>/<name>``."""
        return self.sandbox / self.name


def parse_attribute(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value); ValueError with a sentence otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"attribute {text!r} must look like key=value")
    return key.strip(), value.strip()


def parse_advertise(text: str | None) -> str | None:
    """``10.0.0.5`` or ``10.0.0.5:7946`` (an IP address, Serf resolves no names) -> the
    same text; ValueError with a sentence otherwise."""
    if text is None:
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        host, port = text.strip(), ""
    try:
        ipaddress.ip_address(host.strip("[]"))
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(port)
    except ValueError:
        raise ValueError(
            f"--serf-advertise {text!r} must be an IP address, optionally with :port"
        ) from None
    return text.strip()


def parse_network(text: str) -> Network:
    """``10.0.0.0/8`` or an address (one host) -> a network; ValueError with a sentence."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"network {text!r} must be an address or CIDR, e.g. 127.0.0.1/32 or fd00::/8"
        ) from None


FILE_KEYS = ("commands", "limits", "tasks")


@dataclass(frozen=True)
class FileSettings:
    """What a worker's ``--config`` TOML file holds."""

    tasks: tuple[str, ...] = ()
    commands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=dict)


def read_file(path: Path) -> FileSettings:
    """The worker's TOML file, checked; ValueError with one sentence if it makes no sense."""
    from workers.tasks.execute import check_commands, check_limits  # only with a file

    try:
        with open(path, "rb") as file:
            data: dict[str, Any] = tomllib.load(file)
    except OSError as error:
        raise ValueError(f"--config {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"--config {path}: not valid TOML: {error}") from None
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise ValueError(
            f"--config {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(FILE_KEYS)})"
        )
    tasks = data.get("tasks", [])
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"--config {path}: 'tasks' must be a list of module names")
    commands = data.get("commands", {})
    if not isinstance(commands, dict):
        raise ValueError(f"--config {path}: [commands] must be a table of name = [argv...]")
    limits = data.get("limits", {})
    if not isinstance(limits, dict):
        raise ValueError(f'--config {path}: [limits] must be a table, e.g. memory = "2G"')
    try:
        return FileSettings(tuple(tasks), check_commands(commands), check_limits(limits))
    except ValueError as error:
        raise ValueError(f"--config {path}: {error}") from None
