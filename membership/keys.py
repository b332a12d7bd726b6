"""Serf's two secrets: the gossip encryption key and the RPC auth key.

Every process the project starts runs its gossip encrypted and its agent RPC
authenticated unless it is told ``--insecure``. A key is read from a file
(``python -m membership keygen --out DIR`` writes both, mode 0600, in a 0700
directory) or from the environment, never only from a command line that
``ps`` shows. A key file that others can read is refused, as ssh does.

Environment: ``MM_SERF_ENCRYPT_FILE`` / ``MM_SERF_AUTH_FILE`` name the files,
``MM_SERF_ENCRYPT`` / ``MM_SERF_AUTH`` hold the keys themselves.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from membership.errors import KeyFileError

ENCRYPT_FILE = "serf-encrypt.key"
AUTH_FILE = "serf-rpc-auth.key"
ENCRYPT_SIZE = 16  # bytes, what ``serf keygen`` makes
MAX_KEY = 512
ENV_ENCRYPT, ENV_ENCRYPT_FILE = "MM_SERF_ENCRYPT", "MM_SERF_ENCRYPT_FILE"
ENV_AUTH, ENV_AUTH_FILE = "MM_SERF_AUTH", "MM_SERF_AUTH_FILE"


def insecure_hint(gossip: bool = True, auth_flag: str = "--serf-auth-file") -> str:
    """The sentence a process says when it lacks the keys it needs."""
    if not gossip:
        return (
            "a Serf RPC auth key is required: create the keys with `python -m membership keygen "
            f"--out DIR` and pass {auth_flag} DIR/{AUTH_FILE} (or set {ENV_AUTH_FILE}), or run "
            "with --insecure to go without it."
        )
    return (
        "Serf gossip encryption and RPC auth keys are required: create them with "
        "`python -m membership keygen --out DIR` and pass --serf-encrypt-file DIR/"
        f"{ENCRYPT_FILE} and {auth_flag} DIR/{AUTH_FILE} (or set {ENV_ENCRYPT_FILE} and "
        f"{ENV_AUTH_FILE}), or run with --insecure to go without them."
    )


INSECURE_HINT = insecure_hint()


@dataclass(frozen=True)
class SerfKeys:
    """The keys a process uses; both None only when it runs ``insecure``."""

    encrypt: str | None
    auth: str | None
    insecure: bool = False


def check_encrypt_key(key: str) -> str:
    """The key if it is base64 of 16, 24 or 32 bytes (what Serf accepts); KeyFileError if not."""
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raise KeyFileError("the gossip encryption key is not valid base64") from None
    if len(raw) not in (16, 24, 32):
        raise KeyFileError(
            f"the gossip encryption key decodes to {len(raw)} bytes, not 16, 24 or 32"
        )
    return key


def check_auth_key(key: str) -> str:
    """The key if it is 1-512 printable ASCII characters without spaces; KeyFileError if not."""
    if not 0 < len(key) <= MAX_KEY or not all(33 <= ord(c) < 127 for c in key):
        raise KeyFileError(
            f"the Serf RPC auth key must be 1-{MAX_KEY} printable ASCII characters without spaces"
        )
    return key


def read_key_file(path: Path | str, what: str) -> str:
    """The key stored in ``path``: refused if missing, empty, or readable by group or others."""
    path = Path(path).expanduser()
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"the {what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not ASCII text"
        raise KeyFileError(f"cannot read the {what} file {path}: {reason}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"the {what} file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"the {what} file {path} is readable by others (mode "
            f"{stat.S_IMODE(info.st_mode):o}); run chmod 600 {path}"
        )
    if not text:
        raise KeyFileError(f"the {what} file {path} is empty")
    return text


def resolve(
    *,
    encrypt_file: Path | str | None = None,
    auth_file: Path | str | None = None,
    encrypt: str | None = None,
    auth: str | None = None,
    insecure: bool = False,
    gossip: bool = True,
    auth_flag: str = "--serf-auth-file",
    environ: Mapping[str, str] | None = None,
) -> SerfKeys:
    """The keys from explicit values, else files, else the environment.

    ``gossip`` False: the process only talks RPC to an agent it does not start,
    so only the auth key is needed. Raises KeyFileError with ``INSECURE_HINT``
    when a needed key is missing and not ``insecure``.
    """
    env = os.environ if environ is None else environ
    encrypt = _one(encrypt, encrypt_file, env, ENV_ENCRYPT, ENV_ENCRYPT_FILE, "gossip key")
    auth = _one(auth, auth_file, env, ENV_AUTH, ENV_AUTH_FILE, "RPC auth key")
    if encrypt is not None:
        check_encrypt_key(encrypt)
    if auth is not None:
        check_auth_key(auth)
    missing = auth is None or (gossip and encrypt is None)
    if missing and not insecure:
        raise KeyFileError(insecure_hint(gossip, auth_flag))
    return SerfKeys(encrypt, auth, missing)


def _one(
    value: str | None,
    path: Path | str | None,
    env: Mapping[str, str],
    env_value: str,
    env_file: str,
    what: str,
) -> str | None:
    if value:
        return value
    path = path or env.get(env_file) or None
    if path:
        return read_key_file(path, what)
    return env.get(env_value) or None


def generate_encrypt_key(size: int = ENCRYPT_SIZE) -> str:
    """A gossip encryption key: ``size`` (16, 24 or 32) random bytes, base64."""
    if size not in (16, 24, 32):
        raise ValueError("a Serf encryption key is 16, 24 or 32 bytes")
    return base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def generate_auth_key() -> str:
    """An RPC auth key: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def write_secret(path: Path, text: str, *, replace: bool = False) -> Path:
    """Write ``text`` to ``path`` created 0600 (never readable by others, not even briefly)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (text + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return path


def keygen(out: Path, *, replace: bool = False) -> tuple[Path, Path]:
    """Write a new gossip key and RPC auth key into ``out`` (made 0700); return their paths.

    Existing key files are kept unless ``replace`` (rotation: restart every process after).
    """
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.chmod(0o700)
    encrypt_path, auth_path = out / ENCRYPT_FILE, out / AUTH_FILE
    if not replace:
        existing = [p for p in (encrypt_path, auth_path) if p.exists()]
        if existing:
            raise KeyFileError(
                f"{existing[0]} already exists; pass --replace to make new keys (then restart "
                "every agent and process that uses them)"
            )
    write_secret(encrypt_path, generate_encrypt_key(), replace=replace)
    write_secret(auth_path, generate_auth_key(), replace=replace)
    return encrypt_path, auth_path
