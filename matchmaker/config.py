"""Scheduler configuration: defaults < TOML file < environment < command-line flags.

The file is ``--config PATH`` (or ``MM_CONFIG``); its keys are the field names
below, at the top level. Environment variables are ``MM_`` plus the field
name in capitals (``MM_BROKER_URL``, ``MM_ROUND_INTERVAL``...). Flags are the
field names with dashes (``--broker-url``).

Quotas (``matchmaker.limits``): the submit rate per owner is off by default,
since one client publishing flat out already submits about as fast as one
scheduler processes; ``max_pending_per_owner`` bounds a flood instead.
``max_priority_by_role`` is a table (``{client = 7, admin = 9}``) or
``client=7,admin=9``; a role it does not name may not submit.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from matchmaker.identity import ADMIN, IdentityError, redact, resolve_url
from matchmaker.ledger import check_url, sqlite_path
from matchmaker.models import MAX_PRIORITY, STRATEGIES
from matchmaker.scheduler.clock import BATCH
from matchmaker.wire.broker import DEFAULT_URL, QUEUE_TYPES, BrokerError, check_urls
from membership.errors import MembershipError
from membership.keys import resolve

MAX_PIPELINE = 64
MAX_BATCH_WINDOW = 100.0


class ConfigError(ValueError):
    """A configuration value is wrong; the text names it."""


@dataclass(frozen=True)
class Config:
    broker_url: str = DEFAULT_URL
    broker_ca: str = ""
    broker_cert: str = ""
    broker_key: str = ""
    broker_password_file: str = ""
    authenticated_senders: bool = True
    admin_users: tuple[str, ...] = (ADMIN,)
    trusted_users: tuple[str, ...] = ()
    serf_rpc: str = "127.0.0.1:7373"
    liveness_vhost: str = "/"  # where rabbitmq_event_exchange publishes; "" turns it off
    serf_auth_key: str = ""  # prefer serf_auth_key_file: a flag's value shows in ps
    serf_auth_key_file: str = ""  # a 0600 file holding the Serf RPC auth key
    insecure: bool = False  # talk to the Serf agent without an RPC auth key
    state_dir: Path = Path("state")
    round_interval: float = 0.015  # the longest batch window of the loop (scheduler/clock.py)
    batch_window: float = BATCH  # a full batch window is this many times the last turn's cost
    pipeline_depth: int = 0  # dispatches a worker may hold beyond its slots (0: none)
    strategy: str = "spread"
    aging_interval: float = 60.0
    preference_bonus: int = 1
    priority_weight: int = 1
    metrics_port: int = 0
    metrics_bind: str = "127.0.0.1"
    task_types: tuple[str, ...] = ("sleep", "job_submission", "data_staging", "env_setup")
    retry_backoff: float = 1.0
    result_grace: float = 30.0
    log_format: str = "text"
    log_level: str = "INFO"
    max_pending_per_owner: int = 100_000  # open tasks (pending or in flight); 0: no limit
    submit_rate_per_owner: float = 0.0  # tasks/s, a token bucket; 0: no limit
    submit_burst: int = 10_000  # tokens an owner may save up (with a rate)
    max_priority_by_role: tuple[tuple[str, int], ...] = (("admin", 9), ("client", 7))
    max_classes_per_round: int = 1_000  # task classes one round considers; 0: no limit
    queue_type: str = "classic"  # of the queues the scheduler declares: classic or quorum
    http_port: int = 0  # the HTTP API and dashboard; 0: off
    http_bind: str = "127.0.0.1"
    api_tokens_file: str = ""  # ``token role owner`` lines, mode 0600
    ledger_url: str = ""  # sqlite:///PATH or postgresql://...; empty: <state_dir>/ledger.sqlite
    ledger_retention: float = 7 * 86400.0  # seconds a finished task is kept; 0: for ever

    @property
    def ledger_path(self) -> Path:
        """The SQLite ledger's file (for a PostgreSQL ledger, where one would be)."""
        return sqlite_path(self.ledger_url, self.state_dir) or self.state_dir / "ledger.sqlite"

    def with_serf_auth(self) -> Config:
        """This config with its Serf RPC auth key read (from the key, its file, or
        ``MM_SERF_AUTH``/``MM_SERF_AUTH_FILE``); ConfigError if there is none and not insecure."""
        try:
            keys = resolve(
                auth=self.serf_auth_key or None,
                auth_file=self.serf_auth_key_file or None,
                insecure=self.insecure,
                gossip=False,
                auth_flag="--serf-auth-key-file",
            )
        except MembershipError as error:
            raise ConfigError(str(error)) from None
        return replace(self, serf_auth_key=keys.auth or "")

    def check(self) -> Config:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}"
            )
        if not self.round_interval >= 0:
            raise ConfigError("round_interval must be >= 0 seconds")
        if not 0 <= self.batch_window <= MAX_BATCH_WINDOW:
            raise ConfigError(f"batch_window must be from 0 to {MAX_BATCH_WINDOW:g}")
        if not 0 <= self.pipeline_depth <= MAX_PIPELINE:
            raise ConfigError(f"pipeline_depth must be from 0 to {MAX_PIPELINE}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port must be a TCP port (0 turns metrics off)")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError("http_port must be a TCP port (0 turns the HTTP API off)")
        if self.http_port and not self.api_tokens_file and not _loopback(self.http_bind):
            raise ConfigError("http_bind beyond loopback needs api_tokens_file (bearer tokens)")
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigError(f"queue_type must be classic or quorum, not {self.queue_type!r}")
        try:
            check_urls(self.broker_url, password_given=bool(self.broker_password_file))
        except BrokerError as error:
            raise ConfigError(f"broker_url: {error}") from None
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format must be text or json")
        if not self.task_types:
            raise ConfigError("task_types must name at least one task type")
        try:
            check_url(self.ledger_url)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not self.ledger_retention >= 0:
            raise ConfigError("ledger_retention must be >= 0 seconds (0 keeps tasks for ever)")
        self._check_limits()
        return self

    def _check_limits(self) -> None:
        for name in ("max_pending_per_owner", "submit_rate_per_owner", "max_classes_per_round"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0 (0 turns the limit off)")
        if self.submit_rate_per_owner and self.submit_burst < 1:
            raise ConfigError("submit_burst must be at least 1 when submit_rate_per_owner is set")
        for role, cap in self.max_priority_by_role:
            if not 0 <= cap <= MAX_PRIORITY:
                raise ConfigError(
                    f"max_priority_by_role: the cap of {role!r} must be 0..{MAX_PRIORITY}"
                )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _role_caps(name: str, value: Any) -> tuple[tuple[str, int], ...]:
    """A TOML table ``{client = 7}``, pairs, or ``"client=7,admin=9"``: (role, cap) pairs."""
    if isinstance(value, str):
        pairs: list[Any] = [p.split("=", 1) for p in value.split(",") if p.strip()]
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        pairs = list(value)
    out = []
    for pair in pairs:
        if len(pair) != 2 or isinstance(pair[1], bool) or not str(pair[0]).strip():
            raise ConfigError(f"{name}: write role=cap pairs, e.g. client=7,admin=9")
        out.append((str(pair[0]).strip(), int(str(pair[1]).strip())))
    return tuple(out)


def _convert(name: str, kind: Any, value: Any) -> Any:
    try:
        if name == "max_priority_by_role":
            return _role_caps(name, value)
        if name == "broker_url" and isinstance(value, list):  # a cluster's nodes, in TOML
            return ",".join(str(url).strip() for url in value)
        if kind == "Path" or kind is Path:
            return Path(value)
        if kind in ("float", float):
            return float(value)
        if kind in ("int", int):
            return int(value)
        if kind in ("bool", bool):
            return _bool(value)
        if "tuple" in str(kind):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {redact(repr(value))} ({kind})") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def load(path: Path | str | None = None, flags: dict[str, Any] | None = None) -> Config:
    """Merge the file, the environment and the flags (None values are ignored)."""
    known = {f.name: f.type for f in fields(Config)}
    values: dict[str, Any] = {}
    path = path or os.environ.get("MM_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as error:
            raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"the config file {path} is not valid TOML: {error}") from None
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown keys in {path}: {', '.join(unknown)}")
        values.update(data)
    for name in known:
        env = os.environ.get(f"MM_{name.upper()}")
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in (flags or {}).items() if v is not None and k in known})
    converted = {k: _convert(k, known[k], v) for k, v in values.items()}
    config = replace(Config(), **converted).check()
    if not config.broker_password_file:
        return config
    try:
        url = resolve_url(config.broker_url, config.broker_password_file)
    except IdentityError as error:
        raise ConfigError(str(error)) from None
    return replace(config, broker_url=url)
