"""The local Aurora server's bearer token, and where a client finds it.

The server requires ``Authorization: Bearer <token>`` on every API call. Its
token is either configured (a file, mode 0600) or generated at its first start
into ``<state-dir>/api-token`` (0600, in a 0700 directory) and reused after.
A client reads the token from a file (``MM_AURORA_TOKEN_FILE``) or from
``MM_AURORA_TOKEN``; a token file others can read is refused.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from aurora.errors import AuroraError

TOKEN_FILE = "api-token"
ENV_TOKEN, ENV_TOKEN_FILE = "MM_AURORA_TOKEN", "MM_AURORA_TOKEN_FILE"
MAX_TOKEN = 512


class TokenError(AuroraError):
    """A token is missing, malformed, or stored where others can read it."""


def check_token(token: str) -> str:
    """The token if it is 16-512 printable ASCII characters without spaces."""
    if not 16 <= len(token) <= MAX_TOKEN or not all(33 <= ord(c) < 127 for c in token):
        raise TokenError(
            f"an Aurora API token must be 16-{MAX_TOKEN} printable ASCII characters without spaces"
        )
    return token


def read_token_file(path: Path | str) -> str:
    """The token in ``path``; TokenError if it is missing, bad, or readable by others."""
    path = Path(path).expanduser()
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise TokenError(f"the Aurora token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not ASCII text"
        raise TokenError(f"cannot read the Aurora token file {path}: {reason}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenError(f"the Aurora token file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise TokenError(
            f"the Aurora token file {path} is readable by others (mode "
            f"{stat.S_IMODE(info.st_mode):o}); run chmod 600 {path}"
        )
    return check_token(text)


def state_token(state_dir: Path) -> tuple[str, Path]:
    """The token kept in ``state_dir``, generated (0600) at the first start; and its path."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        state_dir.chmod(0o700)
    except OSError as error:
        raise TokenError(f"cannot use the state directory {state_dir}: {error.strerror}") from None
    path = state_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return read_token_file(path), path
    except OSError as error:
        raise TokenError(f"cannot create the Aurora token file {path}: {error.strerror}") from None
    token = secrets.token_urlsafe(32)
    try:
        os.write(fd, (token + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return token, path


def client_token(
    token: str | None = None,
    token_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The token a client sends: given, else from its file, else ``MM_AURORA_TOKEN_FILE``
    or ``MM_AURORA_TOKEN``; None if there is none (a scheduler without auth)."""
    env = os.environ if environ is None else environ
    if token:
        return check_token(token)
    path = token_file or env.get(ENV_TOKEN_FILE)
    if path:
        return read_token_file(path)
    value = env.get(ENV_TOKEN)
    return check_token(value) if value else None


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    scheme, _, value = (header or "").strip().partition(" ")
    given = value.strip().encode("ascii", "replace")
    match = hmac.compare_digest(given, token.encode("ascii"))
    return match and scheme.lower() == "bearer"
