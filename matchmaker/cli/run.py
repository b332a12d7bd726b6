"""``run``: the scheduler."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from matchmaker import logs
from matchmaker.cli.common import config_of
from matchmaker.wire import amqp


def cmd_run(args: argparse.Namespace) -> int:
    from matchmaker.service import Scheduler

    config = config_of(args).with_serf_auth()
    logs.setup(config.log_format, config.log_level)
    logging.getLogger(amqp.LOG).setLevel(logging.CRITICAL)  # a lost broker: one line of ours
    Scheduler(config).run()
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", parents=[common], help="run the scheduler")
    run.add_argument("--round-interval", dest="round_interval", type=float)
    run.add_argument("--batch-window", dest="batch_window", type=float)
    run.add_argument("--pipeline-depth", dest="pipeline_depth", type=int)
    run.add_argument(
        "--liveness-vhost",
        dest="liveness_vhost",
        help="vhost of RabbitMQ's event exchange ('' turns broker-side failure detection off)",
    )
    run.add_argument("--strategy", choices=["spread", "binpack"])
    run.add_argument("--aging-interval", dest="aging_interval", type=float)
    run.add_argument("--metrics-port", dest="metrics_port", type=int)
    run.add_argument("--metrics-bind", dest="metrics_bind", help="Prometheus endpoint address")
    run.add_argument("--http-port", dest="http_port", type=int, help="HTTP API port (0: off)")
    run.add_argument("--http-bind", dest="http_bind", help="HTTP API address")
    run.add_argument("--api-tokens-file", dest="api_tokens_file", help="API bearer tokens")
    run.add_argument("--log-format", dest="log_format", choices=["text", "json"])
    run.add_argument("--log-level", dest="log_level")
    run.add_argument(
        "--trusted-users", dest="trusted_users", help="users who may report for any worker"
    )
    run.add_argument("--admin-users", dest="admin_users", help="users who may cancel any task")
    run.set_defaults(func=cmd_run)
