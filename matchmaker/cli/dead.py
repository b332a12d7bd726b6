"""``dead list|replay|purge``: the dead letters on ``mm.dead``.

Letters are read with ``basic.get`` and not acknowledged while the command looks at them;
the ones it keeps are given back (``basic.nack`` with requeue, which puts them back where
they were) before it ends, and any it still holds when its connection drops go back the
same way, so ``list`` never loses a letter. A letter is named by its ``message_id`` (the
scheduler's letters have a stable one) or else by the first 16 hex digits of its body's
SHA-256.

``replay`` sends the chosen letters that came from ``mm.requests`` back to it: each is
decoded and validated again as a request first (one that still fails stays on
``mm.dead`` with the reason), the valid ones are published in one broker transaction and
only then acknowledged (removed from ``mm.dead``). A replayed request is sent by the user
who replays it, so a resubmitted task's owner is that user. ``purge`` deletes the chosen
letters, or all of them, and only with ``--yes``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from matchmaker.cli.common import (
    UserError,
    add_json,
    common_options,
    config_of,
    emit,
    positive_int,
    when,
)
from matchmaker.config import Config
from matchmaker.messages import MessageError, decode, encode
from matchmaker.wire import amqp, broker

REPLAYABLE = ("submit", "cancel", "retry", "drain")


@dataclass
class Letter:
    tag: int
    name: str
    body: bytes
    reason: str
    source: str
    size: int
    headers: dict[str, Any]
    message_id: str | None
    user: str | None
    at: float | None

    def to_json(self) -> dict[str, Any]:
        try:
            body: Any = self.body.decode()
            encoding = "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(self.body).decode(), "base64"
        return {
            "name": self.name, "reason": self.reason, "source": self.source,
            "size": self.size, "truncated": self.size > len(self.body),
            "message_id": self.message_id, "user": self.user, "at": self.at,
            "headers": {k: str(v) for k, v in self.headers.items()},
            "body": body, "body_encoding": encoding,
        }  # fmt: skip


def _letter(tag: int, properties: amqp.Properties, body: bytes) -> Letter:
    headers = dict(properties.headers or {})

    def text(key: str) -> str:
        value = headers.get(key, "")
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    size = headers.get("x-mm-size")
    name = properties.message_id or hashlib.sha256(body).hexdigest()[:16]
    return Letter(
        tag, str(name), body, text("x-mm-reason") or "-", text("x-mm-source") or "-",
        size if isinstance(size, int) else len(body), headers, properties.message_id,
        properties.user_id, properties.timestamp,
    )  # fmt: skip


@contextmanager
def holding(config: Config, scan: int) -> Iterator[tuple[amqp.Channel, list[Letter], int]]:
    """Up to ``scan`` letters, held unacknowledged, and how many the queue held; what the
    caller does not ack goes back."""
    connection = broker.connect(
        config.broker_url, name="matchmaker-dead", tls=broker.TLSFiles.of(config)
    )
    try:
        channel = connection.channel()
        try:
            total = int(channel.queue_declare(broker.DEAD, passive=True).method.message_count)
        except amqp.ChannelClosedByBroker as error:
            if error.reply_code != 404:
                raise
            raise UserError("the broker has no mm.dead queue yet: start the scheduler") from None
        letters: list[Letter] = []
        while len(letters) < scan:
            method, properties, body = channel.basic_get(broker.DEAD, auto_ack=False)
            if method is None:
                break
            letters.append(_letter(method.delivery_tag, properties, body))
        yield channel, letters, total
        if channel.is_open:
            channel.basic_nack(0, multiple=True, requeue=True)  # the rest go back, in place
    finally:
        if connection.is_open:
            connection.close()


def _chosen(letters: list[Letter], names: list[str], every: bool) -> list[Letter]:
    if every:
        return letters
    by_name = {letter.name: letter for letter in letters}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"no letter {missing[0]!r} among the {len(letters)} on mm.dead looked at")
    return [by_name[n] for n in dict.fromkeys(names)]


def cmd_list(args: argparse.Namespace) -> int:
    with holding(config_of(args), args.limit) as (_, letters, total):
        shown = [letter.to_json() for letter in letters]
    emit(args, {"letters": shown, "total": total}, lambda: _table(letters, total))
    return 0


def _table(letters: list[Letter], total: int) -> str:
    if not letters:
        return "no dead letters"
    lines = [
        f"{total} dead letters" + (f", the first {len(letters)}:" if total > len(letters) else ":")
    ]
    for letter in letters:
        preview = letter.body[:120].decode(errors="replace").replace("\n", " ")
        cut = " (truncated)" if letter.size > len(letter.body) else ""
        stamp = when(letter.at) if letter.at else ""
        lines.append(
            f"{letter.name}  from {letter.source}  {letter.size} bytes{cut}  {stamp}".rstrip()
        )
        lines.append(f"    reason: {letter.reason}")
        lines.append(f"    body:   {preview}")
    return "\n".join(lines)


def replayable(letter: Letter) -> str | None:
    """Why a letter cannot go back to ``mm.requests``, or None if it can."""
    if letter.source != broker.REQUESTS:
        return f"it came from {letter.source}, not {broker.REQUESTS}"
    if letter.size > len(letter.body):
        return f"only the first {len(letter.body)} of its {letter.size} bytes were kept"
    try:
        decode(letter.body, expect=REPLAYABLE)
    except MessageError as error:
        return f"still invalid: {error}"
    return None


def cmd_replay(args: argparse.Namespace) -> int:
    if bool(args.names) == bool(args.all):
        raise UserError("replay needs letter names or --all (not both)")
    config = config_of(args)
    with holding(config, args.scan) as (channel, letters, _):
        chosen = _chosen(letters, args.names, args.all)
        good = [letter for letter in chosen if replayable(letter) is None]
        refused = {letter.name: replayable(letter) for letter in chosen if letter not in good}
        if good:
            broker.send_requests(
                config.broker_url,
                [encode(decode(letter.body, expect=REPLAYABLE)) for letter in good],  # type: ignore[arg-type]
                name="matchmaker-replay",
                tls=broker.TLSFiles.of(config),
            )
            for letter in good:  # stored on mm.requests: now they may leave mm.dead
                channel.basic_ack(letter.tag)
    replayed = [letter.name for letter in good]
    text = (
        "\n".join(
            [f"replayed {name}" for name in replayed]
            + [f"kept {name}: {why}" for name, why in refused.items()]
        )
        or "nothing to replay"
    )
    emit(args, {"replayed": replayed, "kept": refused}, text)
    return 0 if not refused else 1


def cmd_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise UserError("purge deletes letters for good: add --yes")
    config = config_of(args)
    if args.names:
        with holding(config, args.scan) as (channel, letters, _):
            chosen = _chosen(letters, args.names, False)
            for letter in chosen:
                channel.basic_ack(letter.tag)
        count = len(chosen)
    else:
        connection = broker.connect(
            config.broker_url, name="matchmaker-dead", tls=broker.TLSFiles.of(config)
        )
        try:
            count = int(connection.channel().queue_purge(broker.DEAD).method.message_count)
        finally:
            connection.close()
    emit(args, {"purged": count}, f"purged {count} dead letters")
    return 0


def add_parser(sub: Any) -> None:
    dead = sub.add_parser("dead", help="the dead letters on mm.dead: list, replay, purge")
    actions = dead.add_subparsers(dest="action", required=True)
    common = common_options()
    listing = actions.add_parser(
        "list", parents=[common], help="the letters, with their reasons (none is lost)"
    )
    listing.add_argument(
        "--limit", type=positive_int, default=100, help="at most this many (default 100)"
    )
    add_json(listing)
    listing.set_defaults(func=cmd_list)
    replay = actions.add_parser(
        "replay", parents=[common], help="send letters back to mm.requests, validated again"
    )
    replay.add_argument("names", nargs="*", help="letters by name (as `dead list` shows them)")
    replay.add_argument("--all", action="store_true", help="every replayable letter looked at")
    replay.add_argument(
        "--scan",
        type=positive_int,
        default=10_000,
        help="look at this many letters (default 10000)",
    )
    add_json(replay)
    replay.set_defaults(func=cmd_replay)
    purge = actions.add_parser(
        "purge", parents=[common], help="delete letters for good (needs --yes)"
    )
    purge.add_argument("names", nargs="*", help="only these letters (default: all)")
    purge.add_argument("--yes", action="store_true", help="yes, delete them")
    purge.add_argument(
        "--scan",
        type=positive_int,
        default=10_000,
        help="look at this many letters (default 10000)",
    )
    add_json(purge)
    purge.set_defaults(func=cmd_purge)
