"""A real cluster (Serf, scheduler with its HTTP API, workers) for the API and dashboard tests,
and a small HTTP client for them."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from matchmaker.devtools.cluster import LocalCluster, wait_until
from membership.agent import free_port


@dataclass
class ApiCluster:
    cluster: LocalCluster
    url: str
    tokens: dict[str, str]  # role -> token

    def call(
        self, method: str, path: str, role: str | None = "admin", body: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, decoded JSON body, headers); a redirect is returned, not followed."""
        headers = {"Content-Type": "application/json"}
        if role is not None:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        opener = urllib.request.build_opener(NoRedirect())
        try:
            with opener.open(request, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null"), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null"), dict(e.headers)

    def get(self, path: str, role: str | None = "admin") -> Any:
        status, body, _ = self.call("GET", path, role)
        assert status == 200, (status, body)
        return body


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def write_tokens(path: Path) -> dict[str, str]:
    tokens = {role: secrets.token_hex(16) for role in ("read", "submit", "admin")}
    path.write_text("".join(f"{t} {role} {role}-owner\n" for role, t in tokens.items()))
    os.chmod(path, 0o600)
    return tokens


@contextlib.contextmanager
def running_api(broker_url: str, tmp_path: Path, **cluster: Any) -> Iterator[ApiCluster]:
    """A scheduler process serving its API with bearer tokens, until the block ends;
    ``cluster`` goes to ``LocalCluster`` (e.g. ``ledger_url``)."""
    port = free_port()
    tokens_file = tmp_path / "tokens"
    tokens = write_tokens(tokens_file)
    args = ("--http-port", str(port), "--api-tokens-file", str(tokens_file))
    c = LocalCluster(
        broker_url=broker_url, workdir=tmp_path / "cluster", scheduler_args=args, **cluster
    )
    try:
        c.start_scheduler()
        api = ApiCluster(c, f"http://127.0.0.1:{port}", tokens)
        wait_until(lambda: api.call("GET", "/v1/stats")[0] == 200, 20, "the API answering")
        yield api
    finally:
        c.stop()


@pytest.fixture
def api_cluster(broker_url: str, tmp_path: Path) -> Iterator[ApiCluster]:
    with running_api(broker_url, tmp_path) as api:
        yield api
