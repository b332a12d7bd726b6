"""``python -m workers``: run one worker (push mode with its Serf agent, or pull mode).

Exit status: 0 after a clean drain (SIGTERM/SIGINT), 1 if results could not be
delivered before stopping, 2 for bad arguments, missing Serf keys (without
``--insecure``), a broker still unreachable after ``--broker-wait`` seconds, or a
Serf agent that cannot start or that died and could not be restarted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from matchmaker import __version__, logs
from matchmaker.identity import resolve_url
from matchmaker.wire import amqp
from matchmaker.wire.broker import DEFAULT_URL, BrokerError
from membership.agent import PROFILES
from membership.errors import MembershipError
from membership.keys import resolve
from workers.config import (
    FileSettings,
    SerfConfig,
    WorkerConfig,
    parse_advertise,
    parse_attribute,
    parse_network,
    read_file,
)
from workers.presence import OwnAgent, PresenceError, make_presence, worker_tags
from workers.registry import load_tasks
from workers.runtime import Worker

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"matchmaker worker {__version__}")
    p.add_argument("--name", required=True, help="worker name (its queue is mm.worker.<name>)")
    p.add_argument("--caps", required=True, help="comma-separated task types this worker runs")
    p.add_argument(
        "--tasks",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE, whose @task functions become task types (repeatable)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="worker file: tasks = [...], [commands], [limits]",
    )
    p.add_argument("--slots", type=int, default=1, help="tasks run at once (default 1)")
    p.add_argument(
        "--attr", action="append", default=[], metavar="KEY=VALUE", help="attribute (repeatable)"
    )
    p.add_argument("--mode", choices=("push", "pull"), default="push")
    p.add_argument(
        "--broker-url",
        default=os.environ.get("MM_BROKER_URL", DEFAULT_URL),
        help="AMQP URL, or a cluster's node URLs comma-separated "
        "(default: $MM_BROKER_URL or the local matchmaker vhost)",
    )
    p.add_argument(
        "--broker-ca",
        default=os.environ.get("MM_BROKER_CA", ""),
        help="CA file the broker's certificate must verify against, for amqps:// "
        "(default: $MM_BROKER_CA, else the system trust store)",
    )
    p.add_argument(
        "--broker-cert",
        default=os.environ.get("MM_BROKER_CERT", ""),
        help="client certificate for mutual TLS (default: $MM_BROKER_CERT)",
    )
    p.add_argument(
        "--broker-key",
        default=os.environ.get("MM_BROKER_KEY", ""),
        help="the client certificate's key (default: $MM_BROKER_KEY)",
    )
    p.add_argument(
        "--broker-password-file",
        default=os.environ.get("MM_BROKER_PASSWORD_FILE"),
        metavar="PATH",
        help="file with the password of the URL's user (default: $MM_BROKER_PASSWORD_FILE)",
    )
    p.add_argument("--grace", type=float, default=30.0, help="drain grace period in seconds")
    p.add_argument(
        "--broker-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="at start-up, keep trying an unreachable broker this long (default 60; 0: once)",
    )
    p.add_argument(
        "--perf",
        type=float,
        default=1.0,
        help="relative speed to advertise (1 = the reference machine; the scheduler learns "
        "the real one from run times)",
    )
    p.add_argument("--sandbox", type=Path, help="sandbox root; the worker uses <sandbox>/<name>")
    p.add_argument("--aurora-url", default="http://127.0.0.1:8081")
    p.add_argument(
        "--stage-root",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="data_staging may copy file:// sources under DIR (repeatable; default: none)",
    )
    p.add_argument(
        "--allow-net",
        action="append",
        default=[],
        metavar="CIDR",
        help="data_staging may fetch from this loopback/private network (repeatable; "
        "default: public addresses only)",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus endpoint (0: off)")
    p.add_argument("--metrics-bind", default="127.0.0.1", help="its address (default loopback)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS)
    p.add_argument("--log-format", default="text", choices=("text", "json"))
    serf = p.add_argument_group("Serf (push mode)")
    serf.add_argument(
        "--serf-rpc", metavar="ADDR", help="tag an existing agent instead of starting one"
    )
    serf.add_argument("--serf-bind", metavar="ADDR", help="gossip address of the agent to start")
    serf.add_argument("--serf-rpc-bind", metavar="ADDR", help="RPC address of the agent to start")
    serf.add_argument(
        "--serf-profile",
        choices=PROFILES,
        default="local",
        help="Serf's timing: local (one host, the default), lan (hosts on a LAN), wan",
    )
    serf.add_argument(
        "--serf-advertise",
        metavar="ADDR",
        help="gossip address (ip or ip:port) other hosts reach the agent at (default: its bind)",
    )
    serf.add_argument(
        "--serf-join", action="append", default=[], metavar="ADDR", help="join (repeatable)"
    )
    serf.add_argument(
        "--serf-encrypt-file",
        metavar="PATH",
        help="file holding the gossip encryption key, mode 0600 (default: $MM_SERF_ENCRYPT_FILE, "
        "else the key in $MM_SERF_ENCRYPT)",
    )
    serf.add_argument(
        "--serf-auth-file",
        metavar="PATH",
        help="file holding the agent RPC auth key, mode 0600 (default: $MM_SERF_AUTH_FILE, "
        "else the key in $MM_SERF_AUTH)",
    )
    serf.add_argument(
        "--serf-encrypt", metavar="KEY", help=argparse.SUPPRESS
    )  # visible in ps: kept for old scripts, prefer the file
    serf.add_argument("--serf-auth", metavar="KEY", help=argparse.SUPPRESS)
    serf.add_argument(
        "--insecure",
        action="store_true",
        help="run without gossip encryption and RPC auth (tests on one machine only)",
    )
    serf.add_argument("--no-serf", action="store_true", help="do not advertise (benchmarks)")
    return p


def config_from(args: argparse.Namespace) -> WorkerConfig:
    """The worker's configuration; ValueError with one sentence if it makes no sense."""
    caps = tuple(c.strip() for c in args.caps.split(",") if c.strip())
    settings = read_file(args.config) if args.config else FileSettings()
    load_tasks(caps, [*settings.tasks, *args.tasks])
    attributes = dict(parse_attribute(a) for a in args.attr)
    serf = None
    if args.mode == "push" and not args.no_serf:
        serf = SerfConfig(
            rpc=args.serf_rpc,
            bind=args.serf_bind,
            rpc_bind=args.serf_rpc_bind,
            join=tuple(args.serf_join),
            profile=args.serf_profile,
            advertise=parse_advertise(args.serf_advertise),
        )
    extra = {"sandbox": args.sandbox} if args.sandbox else {}
    return WorkerConfig(
        name=args.name,
        capabilities=caps,
        slots=args.slots,
        attributes=attributes,
        mode=args.mode,
        broker_url=resolve_url(args.broker_url, args.broker_password_file),
        broker_ca=args.broker_ca,
        broker_cert=args.broker_cert,
        broker_key=args.broker_key,
        serf=serf,
        aurora_url=args.aurora_url,
        grace=args.grace,
        broker_wait=args.broker_wait,
        perf=args.perf,
        stage_roots=tuple(root.absolute() for root in args.stage_root),
        allow_net=tuple(parse_network(net) for net in args.allow_net),
        commands=settings.commands,
        limits=settings.limits,
        **extra,
    )


def with_keys(config: WorkerConfig, args: argparse.Namespace) -> WorkerConfig:
    """The config with its Serf keys; ValueError with one sentence if they are missing."""
    if config.serf is None:
        return config
    try:
        keys = resolve(
            encrypt_file=args.serf_encrypt_file,
            auth_file=args.serf_auth_file,
            encrypt=args.serf_encrypt,
            auth=args.serf_auth,
            insecure=args.insecure,
            gossip=not args.serf_rpc,  # on an existing agent only the RPC key is used
        )
    except MembershipError as error:
        raise ValueError(str(error)) from None
    serf = replace(config.serf, encrypt=keys.encrypt, auth=keys.auth, insecure=keys.insecure)
    return replace(config, serf=serf)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    logging.getLogger(amqp.LOG).setLevel(logging.CRITICAL)  # the worker logs what matters
    try:
        config = config_from(args)
        if config.serf is not None:
            worker_tags(config)  # bad tags are told before missing keys
        config = with_keys(config, args)
        presence = make_presence(config)
    except (ValueError, PresenceError) as error:
        p.error(str(error))
    if not 0 <= args.metrics_port <= 65535:
        p.error("--metrics-port must be a TCP port (0 turns metrics off)")
    worker = Worker(config, presence=presence)
    if args.metrics_port:
        from workers.metrics import WorkerMetrics  # only when asked: prometheus_client

        try:
            WorkerMetrics(worker).serve(args.metrics_port, args.metrics_bind)
        except OSError as error:
            p.error(f"cannot serve metrics on {args.metrics_bind}:{args.metrics_port}: {error}")
    lost: list[str] = []
    if isinstance(presence, OwnAgent):

        def on_lost(why: str) -> None:  # never keep consuming while unseen
            lost.append(why)
            worker.stop()

        presence.on_lost = on_lost

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("workers").info("signal %s: draining", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        status = worker.run()
    except (BrokerError, PresenceError) as error:
        print(f"worker {config.name}: {error}", file=sys.stderr)
        return 2
    if lost:
        print(f"worker {config.name}: stopped: {lost[0]}", file=sys.stderr)
        status = 2
    if any(t.name.startswith("task-") and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()  # a task ignored cancellation: do not wait for its thread
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
