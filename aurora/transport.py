"""Thrift over HTTP POST, the way Aurora's own client talks to its scheduler.

One request per call: the buffered message is POSTed with ``Content-Type`` and
``Accept`` set to the protocol's registered media type (and the bearer token,
if any); the whole answer is buffered for the protocol to read. A 307/308
redirect is followed up to ``max_redirects`` times, re-posting the same body,
and the final URL is remembered for later calls, but only within the same
origin, or from http to https on the same host: the token and the job go
nowhere else (a redirect to another host is an error, not a leader to follow).
Anything else but 200 with the expected media type is an
``AuroraTransportError``. (Thrift's ``THttpClient`` always sends
``application/x-thrift``, ignores HTTP status codes and does not follow
redirects, hence this transport.)
"""

from __future__ import annotations

import http.client
import urllib.parse
from io import BytesIO

from thrift.transport.TTransport import TTransportBase

from aurora.errors import AuroraTransportError

MAX_ANSWER = 64 * 1024 * 1024
THRIFT_JSON = "application/vnd.apache.thrift.json"
THRIFT_BINARY = "application/vnd.apache.thrift.binary"


class HttpTransport(TTransportBase):
    """A buffered Thrift transport over one HTTP POST per flush."""

    def __init__(
        self,
        url: str,
        media_type: str,
        timeout: float,
        max_redirects: int = 3,
        token: str | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.media_type = media_type
        self.timeout = timeout
        self.max_redirects = max_redirects
        self._wbuf = BytesIO()
        self._rbuf = BytesIO()

    def isOpen(self) -> bool:
        return True

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, buf: bytes) -> None:
        self._wbuf.write(buf)

    def read(self, sz: int) -> bytes:
        return self._rbuf.read(sz)

    def flush(self) -> None:
        body, self._wbuf = self._wbuf.getvalue(), BytesIO()
        url = self.url
        for _ in range(self.max_redirects + 1):
            status, headers, answer = self._post(url, body)
            if status in (307, 308):
                location = headers.get("Location")
                if not location:
                    raise AuroraTransportError(f"{url} answered {status} without a Location header")
                url = redirect_target(url, location)
                continue
            if status != 200:
                snippet = answer[:200].decode("utf-8", "replace").strip()
                raise AuroraTransportError(f"{url} answered HTTP {status}: {snippet or 'no body'}")
            answered = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if answered and answered != self.media_type:
                raise AuroraTransportError(
                    f"{url} answered {answered!r} where {self.media_type!r} was expected"
                )
            self.url = url
            self._rbuf = BytesIO(answer)
            return
        raise AuroraTransportError(f"more than {self.max_redirects} redirects from {self.url}")

    def _post(self, url: str, body: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuroraTransportError(f"{url!r} is not an http(s) URL")
        conn_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_class(parts.hostname, parts.port, timeout=self.timeout)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers = {
            "Content-Type": self.media_type,
            "Accept": self.media_type,
            "User-Agent": "matchmaker-aurora-client",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read(MAX_ANSWER + 1)
        except TimeoutError:
            raise AuroraTransportError(
                f"timed out after {self.timeout:g}s talking to {url}"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise AuroraTransportError(f"cannot reach Aurora at {url}: {e}") from None
        finally:
            conn.close()
        if len(answer) > MAX_ANSWER:
            raise AuroraTransportError(f"{url} answered more than {MAX_ANSWER} bytes")
        return response.status, response.headers, answer


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def redirect_target(url: str, location: str) -> str:
    """Where a redirect from ``url`` leads, if it may be followed: the same origin, or the
    same host moving from http to https; AuroraTransportError otherwise."""
    target = urllib.parse.urljoin(url, location)
    try:
        here, there = _origin(urllib.parse.urlsplit(url)), _origin(urllib.parse.urlsplit(target))
    except ValueError:
        raise AuroraTransportError(
            f"{url} redirected to a malformed URL {target[:200]!r}"
        ) from None
    same_origin = here == there
    upgrade = here[0] == "http" and there[0] == "https" and here[1] == there[1]
    if not (same_origin or upgrade):
        raise AuroraTransportError(
            f"{url} redirected to {target[:200]!r}; only redirects within the same origin "
            "(or from http to https on the same host) are followed"
        )
    return target
