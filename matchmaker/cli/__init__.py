"""``python -m matchmaker``: run the scheduler, submit and inspect tasks, manage workers.

One module per command group (``run``, ``tasks``, ``events``, ``workers``, ``dead``,
``users``, ``ledger``, ``completion``); this one
assembles the parser and turns every failure a user can cause or meet (bad arguments,
unreachable broker or agent, missing ledger, invalid task) into one sentence on stderr and
a non-zero exit, never a traceback: a bad argument is one line and exit 2, as is any
error the command meets (``EXIT_USAGE``). A scheduler deposed by another one's leader
epoch in the ledger exits ``EXIT_DEPOSED``.
"""

from __future__ import annotations

import argparse
import sys

from matchmaker import __version__
from matchmaker.api import ApiError
from matchmaker.cli import completion, dead, events, ledger, run, tasks, users, workers
from matchmaker.cli.common import EXIT_USAGE, Parser, UserError, common_options
from matchmaker.config import ConfigError
from matchmaker.identity import IdentityError
from matchmaker.ledger import LeaderLost, LedgerError
from matchmaker.wire import amqp, broker
from membership.errors import MembershipError

__all__ = ["EXIT_DEPOSED", "EXIT_USAGE", "UserError", "main", "parser"]

EXIT_DEPOSED = 3  # another scheduler took the lead in the ledger

DESCRIPTION = "run the scheduler, submit and inspect tasks, manage workers."


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="python -m matchmaker", description=DESCRIPTION)
    top.add_argument("--version", action="version", version=f"matchmaker {__version__}")
    common = common_options()
    sub = top.add_subparsers(dest="command", required=True)
    run.add_parser(sub, common)
    tasks.add_parsers(sub, common)
    events.add_parser(sub, common)
    workers.add_parsers(sub, common)
    dead.add_parser(sub)
    users.add_parser(sub)
    ledger.add_parser(sub, common)
    completion.add_parser(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except LeaderLost as error:
        print(f"matchmaker: {error}", file=sys.stderr)
        return EXIT_DEPOSED
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
    except amqp.AMQPError as error:
        print(f"matchmaker: broker error: {error.__class__.__name__} {error}", file=sys.stderr)
    except BrokenPipeError:
        return 0
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"matchmaker: {error.strerror or error}{where}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE
