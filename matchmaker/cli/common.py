"""What every command shares: the user's error, the options that say where things are, the
config they make, and the ways to the broker and the ledger."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from matchmaker.config import Config, load
from matchmaker.ledger import TaskLedger, open_ledger
from matchmaker.messages import Single, encode
from matchmaker.wire import broker

EXIT_USAGE = 2


class UserError(Exception):
    """An error the user can fix; printed as one sentence."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (and exit 2), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def emit(args: argparse.Namespace, value: Any, text: Callable[[], str] | str) -> None:
    """``value`` as JSON with ``--json``, else the text (made only when needed)."""
    if getattr(args, "json", False):
        print(json.dumps(value, indent=2, default=str))
    else:
        print(text if isinstance(text, str) else text())
    sys.stdout.flush()


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the answer as JSON")


def seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 7 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 604800 seconds")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1 or len(text) > 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


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


def ledger_of(config: Config) -> TaskLedger:
    return open_ledger(config, readonly=True)


def when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def common_options(*, nested: bool = False) -> argparse.ArgumentParser:
    """The options of every command that reaches the broker, the agent or the ledger;
    ``nested`` (for an action under a command that has them too) leaves an option not
    given out, so it does not undo the command's."""
    default = argparse.SUPPRESS if nested else None
    common = argparse.ArgumentParser(add_help=False, argument_default=default)
    common.add_argument("--config", help="TOML config file (also MM_CONFIG)")
    common.add_argument(
        "--broker-url",
        dest="broker_url",
        help="amqp(s)://user:pass@host:port/vhost; a cluster's nodes comma-separated",
    )
    common.add_argument("--queue-type", dest="queue_type", choices=["classic", "quorum"])
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
    common.add_argument(
        "--ledger-url",
        dest="ledger_url",
        help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB (also MM_LEDGER_URL)",
    )
    return common
