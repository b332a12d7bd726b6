"""``python -m matchmaker``: run the scheduler, submit and inspect tasks, manage workers.

One module per command group (``run``, ``tasks``, ``workers``, ``users``); this one
assembles the parser and turns every failure a user can cause or meet (bad arguments,
unreachable broker or agent, missing ledger, invalid task) into one sentence on stderr and
a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

import pika.exceptions

from matchmaker import broker
from matchmaker.api import ApiError
from matchmaker.cli import run, tasks, users, workers
from matchmaker.cli.common import EXIT_USAGE, UserError, common_options
from matchmaker.config import ConfigError
from matchmaker.identity import IdentityError
from matchmaker.ledger import LedgerError
from membership.errors import MembershipError

__all__ = ["EXIT_USAGE", "UserError", "main", "parser"]

DESCRIPTION = "run the scheduler, submit and inspect tasks, manage workers."


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m matchmaker", description=DESCRIPTION)
    common = common_options()
    sub = top.add_subparsers(dest="command", required=True)
    run.add_parser(sub, common)
    tasks.add_parsers(sub, common)
    workers.add_parsers(sub, common)
    users.add_parser(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (
        UserError,
        ConfigError,
        LedgerError,
        broker.BrokerError,
        IdentityError,
        ApiError,
    ) as error:
        print(f"matchmaker: {error}", file=sys.stderr)
    except MembershipError as error:
        print(f"matchmaker: {str(error).splitlines()[0]}", file=sys.stderr)
    except pika.exceptions.AMQPError as error:
        print(f"matchmaker: broker error: {error.__class__.__name__} {error}", file=sys.stderr)
    except BrokenPipeError:
        return 0
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"matchmaker: {error.strerror or error}{where}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE
