"""The worker listing behind ``matchmaker workers``: one members query, rendered as text or JSON.

Rows cover every member that claims ``role=worker``: live ones, failed or
left ones with their Serf status, and those whose tags were rejected, with
status ``rejected: <reason>``. ``running`` comes from the scheduler's ledger,
so the caller passes it in.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from membership.errors import MembershipError, TagError
from membership.rpc import Member, SerfRPC
from membership.tags import decode_worker, is_worker

Scalar = str | int | float
COLUMNS = ("NAME", "CAPABILITIES", "SLOTS", "RUNNING", "ATTRIBUTES", "STATUS")


@dataclass(slots=True)
class WorkerRow:
    """One line of the listing (mutable: the CLI may annotate ``status``)."""

    name: str
    capabilities: tuple[str, ...] = ()
    slots: int = 0
    attributes: dict[str, Scalar] = field(default_factory=dict)
    status: str = "alive"
    queue: str = ""
    addr: str = ""

    def to_json(self, running: int = 0) -> dict[str, object]:
        return {
            "name": self.name,
            "capabilities": list(self.capabilities),
            "slots": self.slots,
            "running": running,
            "attributes": dict(self.attributes),
            "status": self.status,
            "queue": self.queue,
            "addr": self.addr,
        }


def rows_from_members(members: Iterable[Member]) -> list[WorkerRow]:
    """Rows for the members that claim to be workers, sorted by name."""
    rows = []
    for member in members:
        if not is_worker(member.tags):
            continue
        try:
            info = decode_worker(member.name, member.tags)
        except TagError as error:
            rows.append(WorkerRow(member.name, status=f"rejected: {error}", addr=member.addr))
            continue
        assert info is not None
        worker = info.worker
        rows.append(
            WorkerRow(
                name=worker.name,
                capabilities=tuple(sorted(worker.capabilities)),
                slots=worker.slots,
                attributes=dict(worker.attributes),
                status=member.status,
                queue=info.queue,
                addr=member.addr,
            )
        )
    return sorted(rows, key=lambda row: row.name)


def fetch_workers(
    rpc_addr: str, auth_key: str | None = None, timeout: float = 5.0
) -> list[WorkerRow]:
    """Ask the agent at ``rpc_addr`` for its members once; MembershipError if it cannot.

    Every failure (unreachable, auth refused, no answer) is a plain MembershipError
    whose message is one sentence for the user.
    """
    try:
        with SerfRPC(rpc_addr, auth_key, timeout=timeout) as rpc:
            return rows_from_members(rpc.members())
    except MembershipError as error:
        raise MembershipError(str(error)) from None
    except ValueError as error:  # a malformed address
        raise MembershipError(str(error)) from None


def _shown(text: str, limit: int = 80) -> str:
    """Text safe for a terminal: control characters escaped, long text cut."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def format_workers(
    rows: Iterable[WorkerRow], as_json: bool = False, running: Mapping[str, int] | None = None
) -> str:
    """The rows as an aligned table, or as a JSON list of objects."""
    running = running or {}
    rows = list(rows)
    if as_json:
        return json.dumps([row.to_json(running.get(row.name, 0)) for row in rows], indent=2)
    if not rows:
        return "no workers"
    lines = [COLUMNS]
    for row in rows:
        attributes = ",".join(f"{k}={v}" for k, v in sorted(row.attributes.items()))
        lines.append(
            (
                _shown(row.name, 64),
                _shown(",".join(row.capabilities), 120) or "-",
                str(row.slots),
                str(running.get(row.name, 0)),
                _shown(attributes, 120) or "-",
                _shown(row.status, 120),
            )
        )
    widths = [max(_width(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(
            cell + " " * (w - _width(cell)) for cell, w in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    )


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide (East Asian) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
