"""A client for the Serf agent's RPC protocol: msgpack objects over one TCP connection.

Every request is a header map ``{"Command", "Seq"}`` optionally followed by a
body map; every response is a header map ``{"Seq", "Error"}`` optionally
followed by a body. Which responses carry a body depends on the command (see
``_BODY_COMMANDS``); errors that stop a command before it runs (handshake or
auth missing) never do. Streams (``stream``, ``query``) answer with one bare
header, then keep sending header + record pairs under the same ``Seq``.

One reader thread decodes the socket as it arrives and routes each message to
the handler registered for its ``Seq``. A response header always has exactly
the keys ``Seq`` and ``Error`` and no body does, so the reader stays in step
even for a ``Seq`` it no longer knows (a stopped stream).

Requests are packed in msgpack's old format (``use_bin_type=False``: bytes and
strings both as raw): Debian's agent (serf 0.8.2) refuses the ``bin`` family
and drops the connection, while every agent version accepts raw. The agent
itself sends ``bin`` for byte fields such as a member's ``Addr``.

Stream callbacks run on the reader thread: they must return quickly and must
not call this client synchronously (hand work to another thread instead).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from membership.errors import SerfAuthError, SerfConnectionError, SerfError

log = logging.getLogger(__name__)

IPC_VERSION = 1
DEFAULT_TIMEOUT = 10.0
MEMBER_EVENTS = "member-join,member-leave,member-failed,member-update,member-reap"

# Commands whose response carries a body after the header.
_BODY_COMMANDS = frozenset(
    {
        "members",
        "members-filtered",
        "join",
        "stats",
        "install-key",
        "use-key",
        "remove-key",
        "list-keys",
        "get-coordinate",
    }
)
_AUTH_REQUIRED = "Authentication required"
_INVALID_AUTH = "Invalid authentication token"
# Errors the agent sends as a bare header, before the command runs.
_HEADER_ONLY_ERRORS = frozenset({_AUTH_REQUIRED, "Handshake required", "Unsupported command"})

Record = dict[str, Any]


def split_addr(addr: str) -> tuple[str, int]:
    """``"127.0.0.1:7373"`` -> ``("127.0.0.1", 7373)``; raises ValueError for anything else."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad RPC address {addr!r}: expected host:port, e.g. 127.0.0.1:7373")
    return host.strip("[]"), int(port)


def _reason(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    return (error.strerror or str(error) or type(error).__name__).lower()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else str(value)


def _addr(value: Any) -> str:
    """Members' ``Addr`` is a Go ``net.IP``: raw bytes on the wire (4 or 16 of them)."""
    try:
        if isinstance(value, list):
            value = bytes(value)
        if isinstance(value, bytes):
            ip = ipaddress.ip_address(value)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ip)
    except ValueError:
        pass
    return _text(value) if value is not None else ""


def _versions(raw: Mapping[str, Any], prefix: str) -> tuple[int, int, int]:
    values = [raw.get(f"{prefix}{part}", 0) for part in ("Min", "Max", "Cur")]
    if isinstance(raw.get(prefix), list | tuple):
        values = [*list(raw[prefix])[:3], 0, 0, 0]
    return (int(values[0] or 0), int(values[1] or 0), int(values[2] or 0))


@dataclass(frozen=True, slots=True)
class Member:
    """One cluster member as the agent reports it; ``tags`` are untrusted input."""

    name: str
    addr: str
    port: int
    tags: dict[str, str]
    status: str
    protocol: tuple[int, int, int] = (0, 0, 0)
    delegate: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Member:
        tags = raw.get("Tags") or {}
        return cls(
            name=_text(raw.get("Name", "")),
            addr=_addr(raw.get("Addr")),
            port=int(raw.get("Port") or 0),
            tags={_text(k): _text(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
            status=_text(raw.get("Status", "")),
            protocol=_versions(raw, "Protocol"),
            delegate=_versions(raw, "Delegate"),
        )


def parse_members(body: Any) -> list[Member]:
    """The members of a response body; malformed entries are logged and skipped."""
    raw = body.get("Members") if isinstance(body, dict) else None
    members = []
    for entry in raw if isinstance(raw, list) else []:
        try:
            members.append(Member.from_wire(entry))
        except (AttributeError, TypeError, ValueError) as error:
            log.warning("skipping a malformed member record from the Serf agent: %s", error)
    return members


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What a query collected before it finished: who acked and who answered what."""

    acks: list[str] = field(default_factory=list)
    responses: dict[str, bytes] = field(default_factory=dict)


class _Reply:
    """A one-shot response: header, then a body if the command has one."""

    def __init__(self, command: str, with_body: bool) -> None:
        self.command = command
        self.with_body = with_body
        self.done = threading.Event()
        self.header: Record = {}
        self.body: Any = None
        self.lost: SerfConnectionError | None = None

    def expects_body(self, header: Record) -> bool:
        return self.with_body and header.get("Error") not in _HEADER_ONLY_ERRORS

    def deliver(self, header: Record, body: Any) -> bool:
        self.header, self.body = header, body
        self.done.set()
        return True

    def fail(self, error: SerfConnectionError) -> None:
        self.lost = error
        self.done.set()


class _Stream:
    """A subscription: a bare acknowledgement header, then header + record pairs."""

    def __init__(self, command: str, on_record: Callable[[Record], bool]) -> None:
        self.ack = _Reply(command, with_body=False)
        self.on_record = on_record  # returns True when the stream is finished

    def expects_body(self, header: Record) -> bool:
        return self.ack.done.is_set()

    def deliver(self, header: Record, body: Any) -> bool:
        if not self.ack.done.is_set():
            self.ack.deliver(header, None)
            return bool(header.get("Error"))
        if not isinstance(body, dict):
            return False
        try:
            return self.on_record(body)
        except Exception:
            log.exception(
                "Serf stream callback failed on %r", body.get("Event") or body.get("Type")
            )
            return False

    def fail(self, error: SerfConnectionError) -> None:
        self.ack.fail(error)


_Handler = _Reply | _Stream


class SerfRPC:
    """A connection to one Serf agent's RPC address.

    ``connect()`` dials, starts the reader, performs the handshake and, with an
    ``auth_key``, authenticates. ``on_close(error)`` is called once, from the
    reader thread, when the connection ends for any reason other than ``close()``.
    """

    def __init__(
        self,
        addr: str,
        auth_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_close: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self.addr = addr
        self.auth_key = auth_key
        self.timeout = timeout
        self.on_close = on_close
        self._sock: socket.socket | None = None
        self._seq = itertools.count()
        self._handlers: dict[int, _Handler] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self._closing = False
        self._reader: threading.Thread | None = None
        self._waiting: tuple[Record, _Handler | None] | None = None

    # -- connection ---------------------------------------------------------

    def connect(self) -> SerfRPC:
        host, port = split_addr(self.addr)
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError as error:
            raise SerfConnectionError(
                f"cannot reach the Serf agent at {self.addr}: {_reason(error)}", "connect"
            ) from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = threading.Thread(
            target=self._read_loop, name=f"serf-rpc-{self.addr}", daemon=True
        )
        self._reader.start()
        try:
            self.handshake()
            if self.auth_key:
                self.auth(self.auth_key)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Close the connection; pending calls fail; ``on_close`` is not called."""
        self._closing = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=self.timeout)
        self._closed.set()

    def __enter__(self) -> SerfRPC:
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -----------------------------------------------------------

    def handshake(self, version: int = IPC_VERSION) -> None:
        self._call("handshake", {"Version": version})

    def auth(self, key: str) -> None:
        self._call("auth", {"AuthKey": key})

    def members(self) -> list[Member]:
        return parse_members(self._call("members"))

    def members_filtered(
        self, tags: Mapping[str, str] | None = None, status: str = "", name: str = ""
    ) -> list[Member]:
        """Members whose tags, status and name match these (anchored, Go-syntax) regexes.

        The agent drops the connection on a regex it cannot compile.
        """
        request = {"Tags": dict(tags or {}), "Status": status, "Name": name}
        try:
            body = self._call("members-filtered", request)
        except SerfConnectionError:
            raise SerfError(
                f"the Serf agent at {self.addr} dropped the connection on members-filtered "
                "(is every filter a valid regular expression?)",
                "members-filtered",
            ) from None
        return parse_members(body)

    def tags(
        self, set_tags: Mapping[str, str | bytes] | None = None, delete: Iterable[str] = ()
    ) -> None:
        """Set and delete tags on the agent (it broadcasts a member-update)."""
        self._call("tags", {"Tags": dict(set_tags or {}), "DeleteTags": list(delete)})

    def join(self, addrs: Iterable[str], replay: bool = False) -> int:
        """Ask the agent to join these gossip addresses; returns how many it reached."""
        body = self._call("join", {"Existing": list(addrs), "Replay": replay})
        return int((body or {}).get("Num", 0))

    def leave(self) -> None:
        """Graceful leave; the agent then shuts down."""
        self._call("leave")

    def force_leave(self, node: str) -> None:
        self._call("force-leave", {"Node": node})

    def event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        self._call("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    def stats(self) -> dict[str, dict[str, str]]:
        return dict(self._call("stats") or {})

    def respond(self, query_id: int, payload: bytes) -> None:
        """Answer a query received through ``stream`` (``ID`` is per connection)."""
        self._call("respond", {"ID": query_id, "Payload": payload})

    def stream(self, types: str, callback: Callable[[Record], None]) -> int:
        """Subscribe to events (``"member-join,user:deploy"`` or ``"*"``); returns the handle.

        ``callback(record)`` runs on the reader thread for each event record.
        """

        def on_record(record: Record) -> bool:
            callback(record)
            return False

        return self._subscribe("stream", {"Type": types}, _Stream("stream", on_record))

    def stop(self, handle: int) -> None:
        """End a stream started by ``stream``."""
        with self._lock:
            self._handlers.pop(handle, None)
        self._call("stop", {"Stop": handle})

    def query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        filter_nodes: Iterable[str] = (),
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        relay_factor: int = 0,
        timeout: float = 0.0,
    ) -> QueryResult:
        """Send a query and block until the agent reports it done.

        ``timeout`` (seconds) overrides the agent's default query timeout when > 0.
        """
        result = QueryResult()
        finished = threading.Event()

        def on_record(record: Record) -> bool:
            kind = record.get("Type")
            if kind == "ack":
                result.acks.append(_text(record.get("From", "")))
            elif kind == "response":
                result.responses[_text(record.get("From", ""))] = bytes(
                    record.get("Payload") or b""
                )
            elif kind == "done":
                finished.set()
                return True
            return False

        request = {
            "FilterNodes": list(filter_nodes),
            "FilterTags": dict(filter_tags or {}),
            "RequestAck": request_ack,
            "RelayFactor": relay_factor,
            "Timeout": int(timeout * 1e9),
            "Name": name,
            "Payload": payload,
        }
        handler = _Stream("query", on_record)
        self._subscribe("query", request, handler)
        # The agent's default timeout grows with the cluster size; allow it generously.
        limit = (timeout or 30.0) + self.timeout
        deadline = time.monotonic() + limit
        while not finished.wait(0.05):
            if self.closed:
                raise SerfConnectionError(
                    f"lost the connection to the Serf agent at {self.addr}", "query"
                )
            if time.monotonic() > deadline:
                raise SerfError(f"query {name!r} did not finish within {limit:g} s", "query")
        return result

    # -- plumbing -----------------------------------------------------------

    def _subscribe(self, command: str, body: Record, handler: _Stream) -> int:
        seq = next(self._seq)
        self._register(seq, handler)
        self._send(command, seq, body)
        self._wait(handler.ack, seq)
        return seq

    def _call(self, command: str, body: Record | None = None) -> Any:
        seq = next(self._seq)
        reply = _Reply(command, with_body=command in _BODY_COMMANDS)
        self._register(seq, reply)
        self._send(command, seq, body)
        return self._wait(reply, seq)

    def _register(self, seq: int, handler: _Handler) -> None:
        if self.closed:
            raise SerfConnectionError(f"the connection to the Serf agent at {self.addr} is closed")
        with self._lock:
            self._handlers[seq] = handler

    def _send(self, command: str, seq: int, body: Record | None) -> None:
        data = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=False)
        if body is not None:
            data += msgpack.packb(body, use_bin_type=False)
        sock = self._sock
        if sock is None:
            raise SerfConnectionError(f"not connected to the Serf agent at {self.addr}", command)
        try:
            with self._write_lock:
                sock.sendall(data)
        except OSError as error:
            with self._lock:
                self._handlers.pop(seq, None)
            raise SerfConnectionError(
                f"lost the connection to the Serf agent at {self.addr}: {_reason(error)}", command
            ) from None

    def _wait(self, reply: _Reply, seq: int) -> Any:
        if not reply.done.wait(self.timeout):
            with self._lock:
                self._handlers.pop(seq, None)
            raise SerfError(
                f"the Serf agent at {self.addr} did not answer {reply.command!r} "
                f"within {self.timeout:g} s",
                reply.command,
            )
        if reply.lost is not None:
            raise reply.lost
        error = _text(reply.header.get("Error") or "")
        if error == _AUTH_REQUIRED:
            raise SerfAuthError(
                f"the Serf agent at {self.addr} requires an RPC auth key ({error})", reply.command
            )
        if error == _INVALID_AUTH:
            raise SerfAuthError(
                f"the Serf agent at {self.addr} refused the RPC auth key ({error})", reply.command
            )
        if error:
            raise SerfError(error, reply.command)
        return reply.body

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        unpacker = msgpack.Unpacker(
            raw=False, unicode_errors="surrogateescape", strict_map_key=False
        )
        error: BaseException | None = None
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                unpacker.feed(data)
                for obj in unpacker:
                    self._dispatch(obj)
        except OSError as exc:
            error = exc
        except Exception as exc:  # undecodable bytes: the stream cannot be trusted any more
            log.error("Serf RPC %s: cannot decode the agent's messages: %s", self.addr, exc)
            error = exc
        finally:
            self._shutdown(error)

    def _dispatch(self, obj: Any) -> None:
        if isinstance(obj, dict) and set(obj) == {"Seq", "Error"}:
            if self._waiting is not None:  # the previous header came without its body
                header, handler = self._waiting
                self._waiting = None
                self._deliver(header, handler, None)
            with self._lock:
                handler = self._handlers.get(obj["Seq"])
            if handler is None or handler.expects_body(obj):
                self._waiting = (obj, handler)
            else:
                self._deliver(obj, handler, None)
        elif self._waiting is not None:
            header, handler = self._waiting
            self._waiting = None
            self._deliver(header, handler, obj)
        else:
            log.debug("Serf RPC %s: ignoring a message with no header", self.addr)

    def _deliver(self, header: Record, handler: _Handler | None, body: Any) -> None:
        if handler is not None and handler.deliver(header, body):
            with self._lock:
                if self._handlers.get(header["Seq"]) is handler:
                    del self._handlers[header["Seq"]]

    def _shutdown(self, error: BaseException | None) -> None:
        self._closed.set()
        lost = SerfConnectionError(f"lost the connection to the Serf agent at {self.addr}")
        with self._lock:
            handlers, self._handlers = list(self._handlers.values()), {}
        for handler in handlers:
            handler.fail(lost)
        if self._sock is not None:
            self._sock.close()
        if not self._closing and self.on_close is not None:
            try:
                self.on_close(error)
            except Exception:
                log.exception("Serf RPC on_close callback failed")
