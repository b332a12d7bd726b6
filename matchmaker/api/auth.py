"""Bearer tokens: a file of ``token role owner`` lines (``#`` comments), mode 0600.

Roles are ordered ``read`` < ``submit`` < ``admin``: each may do what the ones before it
may. Tokens are compared in constant time (``hmac.compare_digest``) against every entry.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from matchmaker.api import ApiError
from matchmaker.messages import NAME

ROLES = ("read", "submit", "admin")
MIN_TOKEN = 16


@dataclass(frozen=True)
class Identity:
    role: str
    owner: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


ANONYMOUS = Identity("read", "")  # on loopback without a tokens file


def load_tokens(path: str | Path) -> tuple[tuple[bytes, Identity], ...]:
    """The tokens of ``path``; ApiError (one sentence) if it is unsafe or malformed."""
    path = Path(path)
    try:
        info = os.stat(path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        why = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ApiError(f"cannot read the API tokens file {path}: {why}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ApiError(f"the API tokens file {path} must be readable by its owner only (0600)")
    tokens: list[tuple[bytes, Identity]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 3:
            raise ApiError(f"{path}:{number}: write 'token role owner'")
        token, role, owner = words
        if len(token) < MIN_TOKEN:
            raise ApiError(f"{path}:{number}: a token must be at least {MIN_TOKEN} characters")
        if role not in ROLES:
            raise ApiError(f"{path}:{number}: the role must be one of {', '.join(ROLES)}")
        if not NAME.fullmatch(owner):
            raise ApiError(f"{path}:{number}: the owner must be a name (letters, digits, _.:@-)")
        tokens.append((token.encode(), Identity(role, owner)))
    if not tokens:
        raise ApiError(f"the API tokens file {path} holds no tokens")
    return tuple(tokens)


def identify(
    header: str | None, tokens: tuple[tuple[bytes, Identity], ...] | None
) -> Identity | None:
    """Who the ``Authorization`` header names; None if nobody (a 401)."""
    if tokens is None:
        return ANONYMOUS if not header else None
    if not header or not header.startswith("Bearer "):
        return None
    given = header[len("Bearer ") :].strip().encode()
    found = None
    for token, identity in tokens:  # every entry, so the time does not tell which matched
        if hmac.compare_digest(token, given):
            found = identity
    return found
