"""What every command shares: the user's error, the options that say where things are, the
config they make, and the ways to the broker and the ledger."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime

from matchmaker import broker
from matchmaker.config import Config, load
from matchmaker.ledger import Ledger
from matchmaker.messages import Single, encode

EXIT_USAGE = 2


class UserError(Exception):
    """An error the user can fix; printed as one sentence."""


def config_of(args: argparse.Namespace) -> Config:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    return load(args.config, flags)


def send(config: Config, messages: Sequence[Single]) -> None:
    broker.send_requests(
        config.broker_url,
        map(encode, messages),
        name="matchmaker-cli",
        tls=broker.TLSFiles.of(config),
    )


def ledger_of(config: Config) -> Ledger:
    return Ledger(config.ledger_path, readonly=True)


def when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def common_options() -> argparse.ArgumentParser:
    """The options of every command that reaches the broker, the agent or the ledger."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (also MM_CONFIG)")
    common.add_argument(
        "--broker-url", dest="broker_url", help="amqp(s)://user:pass@host:port/vhost"
    )
    common.add_argument(
        "--broker-ca", dest="broker_ca", help="CA file the broker's certificate must verify against"
    )
    common.add_argument("--broker-cert", dest="broker_cert", help="client certificate (mTLS)")
    common.add_argument("--broker-key", dest="broker_key", help="the client certificate's key")
    common.add_argument(
        "--broker-password-file",
        dest="broker_password_file",
        help="file with the broker URL's password (also MM_BROKER_PASSWORD_FILE)",
    )
    common.add_argument("--serf-rpc", dest="serf_rpc", help="the local Serf agent's RPC address")
    common.add_argument("--serf-auth-key", dest="serf_auth_key", help=argparse.SUPPRESS)
    common.add_argument(
        "--serf-auth-key-file",
        dest="serf_auth_key_file",
        help="0600 file with the Serf RPC auth key (also MM_SERF_AUTH_FILE)",
    )
    common.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="talk to the Serf agent without an RPC auth key",
    )
    common.add_argument("--state-dir", dest="state_dir", help="where the ledger lives")
    return common
