"""HTTP(S) GETs that reach only allowed addresses, bounded by wall-clock time and cancel.

The model: a URL's host is resolved once and every address is checked (public
unicast only, unless a network in ``allow`` covers it); the connection goes
to a checked address, the name travelling in the Host header and as TLS SNI
(and certificate name), so a second DNS answer cannot move it elsewhere.
Redirects are followed here, each hop checked the same way, at most
``MAX_REDIRECTS``. Name resolution and every read wait in slices of
``SLICE`` seconds and check the deadline and the cancel flag between them,
so a resolver or server that stalls or drips a byte at a time is dropped at
the deadline or on cancel.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from workers.tasks.base import Network

MAX_REDIRECTS = 5
SLICE = 0.25  # longest a read waits before the deadline and cancel flag are checked again
CONNECT_TIMEOUT = 10.0  # connect and TLS handshake, each (also bounded by the deadline)
REDIRECTS = frozenset({301, 302, 303, 307, 308})
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """The URL may not be fetched, or fetching it failed; the text says why."""


class Guard:
    """The deadline (``time.monotonic``) and cancel flag every blocking step obeys, and
    what is being done (for the error)."""

    def __init__(self, deadline: float, cancelled: threading.Event, what: str) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.what = what

    def left(self) -> float:
        """Seconds left; FetchError once cancelled or out of time."""
        if self.cancelled.is_set():
            raise FetchError(f"{self.what} was cancelled")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FetchError(f"{self.what} did not finish in time")
        return left


def refusal(address: Address) -> str | None:
    """Why ``address`` is not public unicast (None if it is)."""
    if isinstance(address, ipaddress.IPv6Address):
        teredo = address.teredo[1] if address.teredo else None
        for inner in (address.ipv4_mapped, address.sixtofour, teredo):
            if inner is not None and refusal(inner) is not None:
                return f"{refusal(inner)} (inside {address})"
        if address.is_site_local:
            return "site-local"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "not globally routable"


def allowed(address: Address, allow: Sequence[Network]) -> str | None:
    """None if the worker may connect to ``address``, else why not."""
    if any(address.version == net.version and address in net for net in allow):
        return None
    return refusal(address)


def _lookup(host: str, port: int, guard: Guard) -> list[Any]:
    """``getaddrinfo`` on a helper thread, waited for in slices that obey the guard (the
    resolver itself cannot be interrupted; a late answer is dropped)."""
    answer: list[Any] = []
    done = threading.Event()

    def ask() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as e:
            answer.append(e)
        done.set()

    threading.Thread(target=ask, name="data-staging-resolve", daemon=True).start()
    while not done.wait(min(SLICE, guard.left())):
        pass
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return list(answer[0])


def resolve(host: str, port: int, allow: Sequence[Network], url: str, guard: Guard) -> list[str]:
    """The addresses of ``host`` (of ``url``) the worker may connect to, in resolver order."""
    try:
        infos = _lookup(host, port, guard)
    except (OSError, UnicodeError) as e:
        raise FetchError(f"cannot reach {url}: cannot resolve {host!r}: {_why(e)}") from None
    good: list[str] = []
    refused: list[str] = []
    for info in infos:
        text = str(info[4][0])
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            refused.append(f"{text} (not an IP address)")
            continue
        why = allowed(address, allow)
        if why is not None:
            refused.append(f"{text} ({why})")
        elif text not in good:
            good.append(text)
    if not good:
        shown = ", ".join(dict.fromkeys(refused)) or "nothing"
        raise FetchError(
            f"refused {url}: {host} resolves to {shown}, and this worker does not fetch from "
            f"such addresses (a worker may allow a network with --allow-net)"
        )
    return good


class _Socket:
    """What ``http.client`` uses of a socket: sends under the deadline, and readers that
    wait in slices obeying the guard. Like a socket's ``makefile``, a reader keeps the
    socket open until it is closed too."""

    def __init__(self, sock: socket.socket, guard: Guard) -> None:
        self.sock, self.guard = sock, guard
        self.users = 1  # this object, and each reader handed out

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(min(CONNECT_TIMEOUT, self.guard.left()))
        self.sock.sendall(data)

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        self.users += 1
        return io.BufferedReader(_Raw(self))

    def close(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.sock.close()


class _Raw(io.RawIOBase):
    """A socket's receiving side, read in slices that obey the guard."""

    def __init__(self, owner: _Socket) -> None:
        self.owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        sock, guard = self.owner.sock, self.owner.guard
        while True:
            sock.settimeout(min(SLICE, guard.left()))
            try:
                return sock.recv_into(buffer)
            except TimeoutError:
                continue

    def close(self) -> None:
        if not self.closed:
            self.owner.close()
        super().close()


def _open_socket(addresses: list[str], port: int, guard: Guard) -> socket.socket:
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection(
                (address, port), timeout=min(CONNECT_TIMEOUT, guard.left())
            )
        except OSError as e:
            error = e
    assert error is not None
    raise error


class _HTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, addresses: list[str], guard: Guard) -> None:
        super().__init__(host, port)
        self.addresses, self.guard = addresses, guard

    def connect(self) -> None:
        raw = _open_socket(self.addresses, self.port, self.guard)
        self.sock = _Socket(raw, self.guard)


class _HTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addresses: list[str], guard: Guard) -> None:
        super().__init__(host, port, context=ssl.create_default_context())
        self.addresses, self.guard = addresses, guard

    def connect(self) -> None:
        raw = _open_socket(self.addresses, self.port, self.guard)
        try:
            tls = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]
        except BaseException:
            raw.close()
            raise
        self.sock = _Socket(tls, self.guard)


def _connection(url: str, allow: Sequence[Network], guard: Guard) -> tuple[Any, str]:
    """A connection to a checked address of ``url``'s host, and the request target."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise FetchError(f"{url!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"{url} is not an http(s) URL")
    if not host:
        raise FetchError(f"{url} names no host")
    if port == 0:
        raise FetchError(f"{url} names port 0")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port, allow, url, guard)
    cls = _HTTPS if parts.scheme == "https" else _HTTP
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return cls(host, port, addresses, guard), target
    except ValueError as e:  # http.client's InvalidURL
        raise FetchError(f"{url!r} is not a valid URL: {e}") from None


@contextlib.contextmanager
def get(
    url: str, allow: Sequence[Network], guard: Guard, headers: dict[str, str]
) -> Iterator[http.client.HTTPResponse]:
    """The 200 response to GET ``url`` (redirects followed and checked); closed on exit."""
    for _ in range(MAX_REDIRECTS + 1):
        connection, target = _connection(url, allow, guard)
        response = None
        try:
            response = _ask(connection, target, headers, url)
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"{url} redirected (HTTP {response.status}) to nowhere")
                url = _follow(url, location)
                continue
            if response.status != 200:
                reason = str(response.reason)[:100]
                raise FetchError(f"{url} answered HTTP {response.status} {reason}")
            yield response
            return
        finally:
            connection.close()
            if response is not None:
                response.close()
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _follow(url: str, location: str) -> str:
    try:
        return urllib.parse.urljoin(url, location.strip())
    except ValueError as e:
        raise FetchError(f"{url} redirected to {location[:200]!r}, not a valid URL: {e}") from None


def _ask(
    connection: http.client.HTTPConnection, target: str, headers: dict[str, str], url: str
) -> http.client.HTTPResponse:
    try:
        connection.request("GET", target, headers=headers)
        return connection.getresponse()
    except (OSError, http.client.HTTPException, ValueError) as e:  # InvalidURL: a ValueError
        raise FetchError(f"cannot reach {url}: {_why(e)}") from None


def read(response: http.client.HTTPResponse, size: int, url: str) -> bytes:
    """At most ``size`` bytes of the body of ``url``, as soon as some came; b"" at its end."""
    try:
        return response.read1(size)
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(f"reading {url} failed: {_why(e)}") from None


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or e.__class__.__name__
