"""Certificates for ``amqps://``: a CA, a broker (server) certificate, client certificates.

``python -m matchmaker.tls DIR`` writes, with ``openssl``, into DIR (made 0700):
``ca.pem``/``ca.key`` (the CA), ``server.pem``/``server.key`` (the broker's, valid for
``--host`` names and addresses, by default localhost and 127.0.0.1) and, per
``--client NAME``, ``client-NAME.pem``/``client-NAME.key`` (for mutual TLS). Keys are
ECDSA P-256 and written 0600 as they are created. Existing files are kept, so a rerun
adds what is missing without replacing a CA that certificates already trust.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 825  # the longest validity clients still accept for a server certificate
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9*]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*")


class TLSError(RuntimeError):
    """A certificate could not be made; the text says which and why."""


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _openssl(args: Sequence[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["openssl", *args], input=stdin, capture_output=True, timeout=60, check=False
        )
    except FileNotFoundError:
        raise TLSError("openssl is not installed (it makes the certificates)") from None
    except subprocess.TimeoutExpired:
        raise TLSError(f"openssl {args[0]} did not finish in 60 s") from None
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise TLSError(f"openssl {args[0]} failed: {last}")
    return done.stdout


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 (never wider, not even for a moment) and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _new_key(path: Path) -> None:
    pem = _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    _write_private(path, pem)


def _subject_names(hosts: Iterable[str]) -> str:
    names = []
    for host in hosts:
        try:
            names.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            if not _HOST.fullmatch(host) or len(host) > 253:
                raise TLSError(f"{host!r} is not a host name or an IP address") from None
            names.append(f"DNS:{host}")
    if not names:
        raise TLSError("a server certificate needs at least one host name or address")
    return ",".join(names)


def make_ca(directory: Path, days: int = DEFAULT_DAYS) -> Pair:
    """The CA in ``directory`` (``ca.pem``, ``ca.key``), made if missing."""
    pair = Pair(directory / "ca.pem", directory / "ca.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    if pair.cert.exists() or pair.key.exists():
        raise TLSError(f"{directory} holds half a CA (ca.pem or ca.key alone); remove it")
    _new_key(pair.key)
    _openssl([
        "req", "-x509", "-new", "-key", str(pair.key), "-out", str(pair.cert),
        "-days", str(days), "-sha256", "-subj", "/CN=matchmaker CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ])  # fmt: skip
    return pair


def make_cert(
    directory: Path,
    ca: Pair,
    stem: str,
    common_name: str,
    *,
    hosts: Iterable[str] = (),
    client: bool = False,
    days: int = DEFAULT_DAYS,
) -> Pair:
    """A certificate ``<stem>.pem`` (and key) signed by ``ca``, made if missing: for a
    server valid for ``hosts`` (subject alternative names), or for a client."""
    if not _NAME.fullmatch(common_name):
        raise TLSError(f"certificate name {common_name!r} must be 1-64 letters, digits and _ . @ -")
    pair = Pair(directory / f"{stem}.pem", directory / f"{stem}.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    for path in (pair.cert, pair.key):
        path.unlink(missing_ok=True)  # half a pair: made again
    usage = "clientAuth" if client else "serverAuth"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if not client:
        lines.append(f"subjectAltName={_subject_names(hosts)}")
    _new_key(pair.key)
    csr = _openssl(["req", "-new", "-key", str(pair.key), "-subj", f"/CN={common_name}"])
    with tempfile.NamedTemporaryFile("w", suffix=".ext", dir=directory) as ext:
        ext.write("\n".join(lines) + "\n")
        ext.flush()
        _openssl(
            [
                "x509", "-req", "-CA", str(ca.cert), "-CAkey", str(ca.key),
                "-CAcreateserial", "-days", str(days), "-sha256",
                "-extfile", ext.name, "-out", str(pair.cert),
            ],
            stdin=csr,
        )  # fmt: skip
    return pair


def make_all(
    directory: Path,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    clients: Iterable[str] = (),
    days: int = DEFAULT_DAYS,
) -> dict[str, Pair]:
    """The CA, the server certificate and one certificate per client, in ``directory``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.is_symlink():
        raise TLSError(f"{directory} is a symbolic link; give the real directory")
    directory.chmod(0o700)
    ca = make_ca(directory, days)
    made = {"ca": ca, "server": make_cert(directory, ca, "server", "server", hosts=hosts)}
    for name in clients:
        made[f"client-{name}"] = make_cert(
            directory, ca, f"client-{name}", name, client=True, days=days
        )
    return made


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m matchmaker.tls", description=__doc__.split("\n")[0])
    p.add_argument("directory", type=Path, help="where the files go (made 0700)")
    p.add_argument(
        "--host",
        action="append",
        help="a name or address the broker is reached by (repeatable; "
        f"default: {', '.join(DEFAULT_HOSTS)})",
    )
    p.add_argument("--client", action="append", default=[], help="a client certificate's name")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity in days")
    args = p.parse_args(argv)
    if not 1 <= args.days <= 3650:
        p.error("--days must be from 1 to 3650")
    try:
        made = make_all(args.directory, args.host or DEFAULT_HOSTS, args.client, args.days)
    except (TLSError, OSError) as error:
        text = error.strerror if isinstance(error, OSError) and error.strerror else error
        print(f"matchmaker.tls: {text}", file=sys.stderr)
        return 1
    for name, pair in made.items():
        print(f"{name}: {pair.cert} {pair.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
