"""Aurora's HTTP transport for the Thrift API: POST ``/api``, protocol by content type.

As Aurora's scheduler does, the request's ``Content-Type`` picks the protocol
the body is read with (``application/vnd.apache.thrift.binary`` is TBinary;
``application/vnd.apache.thrift.json``, ``application/json``,
``application/x-thrift`` or none is TJSON) and the ``Accept`` header picks the
protocol of the answer; without a recognised ``Accept`` the answer uses the
request's protocol. Responses carry the matching registered media type.
Every request but ``GET /health`` (``OK``, for readiness probes) must carry
``Authorization: Bearer <token>``; anything else is answered 401 before its
body is read, and the connection is closed.
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TJSONProtocol import TJSONProtocol
from thrift.transport.TTransport import TMemoryBuffer

from aurora.auth import authorized
from aurora.gen.api import AuroraSchedulerManager
from aurora.transport import THRIFT_BINARY, THRIFT_JSON

log = logging.getLogger(__name__)

API_PATH = "/api"
MAX_BODY = 16 * 1024 * 1024
PROTOCOLS: dict[str, Any] = {
    THRIFT_JSON: TJSONProtocol,
    "application/json": TJSONProtocol,
    "application/x-thrift": TJSONProtocol,
    THRIFT_BINARY: TBinaryProtocol,
}
MEDIA_TYPE = {TJSONProtocol: THRIFT_JSON, TBinaryProtocol: THRIFT_BINARY}


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


class ApiServer(ThreadingHTTPServer):
    """A threaded HTTP server that hands ``/api`` calls to ``handler``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: Any, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.processor = AuroraSchedulerManager.Processor(handler)
        self.token = token
        super().__init__((host, port), _RequestHandler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}"

    def start(self) -> str:
        """Serve in a background thread; return the base URL."""
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.1,), name="aurora-api", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever that never began
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()


class _RequestHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def _refused(self) -> bool:
        """Answer 401 unless the request carries the server's token."""
        if authorized(self.headers.get("Authorization"), self.server.token):
            return False
        self.close_connection = True  # its body, if any, is never read
        self.send_response(HTTPStatus.UNAUTHORIZED)
        self.send_header("WWW-Authenticate", 'Bearer realm="aurora"')
        self.send_header("Connection", "close")
        body = b"A valid API token is required: send Authorization: Bearer <token>.\n"
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(HTTPStatus.OK, b"OK", "text/plain")
        elif self._refused():
            return
        elif self.path == API_PATH:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, b"POST Thrift calls to /api", "text/plain")
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def do_POST(self) -> None:
        if self._refused():
            return
        if self.path.split("?")[0] != API_PATH:
            self._reply(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        content_type = _media_type(self.headers.get("Content-Type")) or "application/x-thrift"
        in_protocol = PROTOCOLS.get(content_type)
        if in_protocol is None:
            message = f"unsupported Content-Type {content_type!r}".encode()
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message, "text/plain")
            return
        accepted = [_media_type(t) for t in self.headers.get("Accept", "").split(",")]
        out_protocol = next((PROTOCOLS[t] for t in accepted if t in PROTOCOLS), in_protocol)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(HTTPStatus.LENGTH_REQUIRED, b"Content-Length required", "text/plain")
            return
        if not 0 <= length <= MAX_BODY:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request too large", "text/plain")
            return
        body = self.rfile.read(length)
        out = TMemoryBuffer()
        try:
            self.server.processor.process(in_protocol(TMemoryBuffer(body)), out_protocol(out))
        except Exception as e:  # whatever a malformed body makes the protocol raise
            log.debug("malformed request: %r", e)
            message = f"malformed Thrift request: {e}".encode()
            self._reply(HTTPStatus.BAD_REQUEST, message, "text/plain")
            return
        self._reply(HTTPStatus.OK, out.getvalue(), MEDIA_TYPE[out_protocol])

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
