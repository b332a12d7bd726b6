"""Which task types live workers advertise: the warnings of ``matchmaker submit``.

The scheduler accepts a task of any well-formed type; one that no live worker
advertises waits (``explain``: "no live worker advertises task type ...") until
a worker that runs it joins. ``submit`` tells its user at once instead: it asks
the local Serf agent (the scheduler's ``serf_rpc``) which types the live
workers advertise, and warns on stderr about each submitted type none does,
adding when the type is not among the configured ``task_types`` either (a
typo, most likely). If the agent cannot be asked, it warns only about types
that are not configured. A warning never stops a submit.
"""

from __future__ import annotations

from collections.abc import Iterable

from matchmaker.config import Config, ConfigError
from membership.errors import MembershipError

ASK_TIMEOUT = 2.0


def advertised(config: Config) -> set[str] | None:
    """The task types the live workers advertise, or None if the agent cannot be asked."""
    from membership.table import fetch_workers

    try:
        config = config.with_serf_auth()
        rows = fetch_workers(config.serf_rpc, config.serf_auth_key or None, timeout=ASK_TIMEOUT)
    except (ConfigError, MembershipError):
        return None
    return {cap for row in rows if row.status == "alive" for cap in row.capabilities}


def warnings(types: Iterable[str], live: set[str] | None, configured: Iterable[str]) -> list[str]:
    """One sentence per submitted type that will wait for a worker (or may be a typo)."""
    known = set(configured)
    out = []
    for name in sorted(set(types)):
        unlisted = name not in known
        if live is None:
            if unlisted:
                out.append(
                    f"task type {name!r} is not among the configured task_types, and the "
                    "live workers could not be asked; its tasks wait until a worker "
                    "advertises it"
                )
        elif name not in live:
            also = " (nor is it among the configured task_types)" if unlisted else ""
            out.append(
                f"no live worker advertises task type {name!r}{also}; its tasks wait until one does"
            )
    return out
