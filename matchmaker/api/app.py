"""The Starlette application: the ``/v1`` routes, the OpenAPI document and the dashboard.

Every answer that is not a success is ``{"error": "<one sentence>"}``. Reads need the
``read`` role, submitting ``submit``, cancel ``submit`` for one's own task (when the
ledger records owners) or ``admin``, retry and drain ``admin``. A drain may carry a
``deadline`` (seconds): when it passes, what still runs on the worker is cancelled there and
runs elsewhere (``matchmaker.drains``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from matchmaker.api import auth
from matchmaker.api.control import encode_drain, encode_retry
from matchmaker.api.leader import Leader
from matchmaker.api.openapi import document
from matchmaker.api.snapshot import Board, Snapshot
from matchmaker.api.store import OPEN_STATES, STATES, Store, StoreError
from matchmaker.messages import (
    MAX_MESSAGE_BYTES,
    MAX_TIMEOUT,
    NAME,
    Cancel,
    MessageError,
    TaskRequest,
    decode,
    encode,
)
from matchmaker.wire import broker

log = logging.getLogger("matchmaker.api")
STATIC = Path(__file__).parent / "static"
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_STREAMS = 32
Handler = Callable[[Request], Awaitable[Response]]


class NotActive(Exception):
    """This scheduler is not active: the answer is a redirect to the one that is, or 503."""


class Refused(Exception):
    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers


def answer(value: Any, status: int = 200) -> Response:
    body = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status, media_type="application/json")


def error(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return (
        answer({"error": text}, status)
        if not headers
        else Response(orjson.dumps({"error": text}), status, headers, media_type="application/json")
    )


# -- input ----------------------------------------------------------------------------


def params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    keys = [k for k, _ in request.query_params.multi_items()]
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise Refused(400, f"unknown query parameter {unknown[0]!r} (allowed: {listed})")
    if len(keys) != len(set(keys)):
        raise Refused(400, "each query parameter may be given once")
    return dict(request.query_params)


def local_host(host: str) -> bool:
    """Whether a Host header names the loopback (with or without a port)."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.strip("[]") in ("127.0.0.1", "localhost", "::1") or name.startswith("127.")


def name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not NAME.fullmatch(value):
        raise Refused(400, f"{what} must be 1-128 letters, digits or _ . : @ -")
    return value


def number(value: str | None, what: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    try:
        n = float(value)
    except ValueError:
        raise Refused(400, f"{what} must be a number") from None
    if not math.isfinite(n) or not low <= n <= high:
        raise Refused(400, f"{what} must be between {low:g} and {high:g}")
    return n


def clamp_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or len(value) > 9:
        raise Refused(400, "limit must be a positive integer")
    return max(1, min(MAX_LIMIT, int(value)))


async def json_body(request: Request, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise Refused(413, f"the body is over the {limit}-byte limit")
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refused(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


# -- the application ---------------------------------------------------------------


class Api:
    def __init__(self, config: Any, board: Board) -> None:
        self.config = config
        self.board = board
        self.store = Store(config)
        path = getattr(config, "api_tokens_file", "")
        self.tokens = auth.load_tokens(path) if path else None
        self.streams = 0
        self.leader = Leader(config) if getattr(config, "serf_rpc", "") else None

    # guards ----------------------------------------------------------------

    def who(self, request: Request, role: str) -> auth.Identity:
        if self.tokens is None and not local_host(request.headers.get("host", "")):
            # anonymous reads are for this host's own users, not a page that rebound a name
            raise Refused(403, "without tokens the API answers only requests for localhost")
        identity = auth.identify(request.headers.get("authorization"), self.tokens)
        if identity is None:
            raise Refused(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        if not identity.may(role):
            raise Refused(403, f"this token's role ({identity.role}) may not do this ({role})")
        return identity

    def active(self) -> Snapshot:
        snapshot = self.board.fresh()
        if snapshot is None:
            raise NotActive()
        return snapshot

    async def elsewhere(self, request: Request) -> Response:
        """A standby's answer: 307 to the active scheduler's API (``api.leader``), or 503."""
        found = await asyncio.to_thread(self.leader.find) if self.leader else None
        if found is None:
            return error(
                503,
                "this scheduler is not active (standing by or reconnecting) and knows no leader",
                {"Retry-After": "2"},
            )
        query = f"?{request.url.query}" if request.url.query else ""
        location = f"http://{found}{request.url.path}{query}"
        text = f"this scheduler stands by; the active one's API is at http://{found}/"
        return error(307, text, {"Location": location})

    def send(self, bodies: list[bytes]) -> None:
        try:
            broker.send_requests(
                self.config.broker_url,
                bodies,
                name="matchmaker-api",
                tls=broker.TLSFiles.of(self.config),
            )
        except broker.BrokerError as e:
            raise Refused(502, str(e)) from None

    # reads -----------------------------------------------------------------

    async def list_tasks(self, request: Request) -> Response:
        self.who(request, "read")
        self.active()
        q = params(request, ("state", "type", "worker", "owner", "since", "limit", "cursor"))
        state = q.get("state")
        if state is not None and state not in STATES:
            raise Refused(400, f"state must be one of {', '.join(STATES)}")
        filters = {
            "state": state,
            "type": name(q.get("type"), "type"),
            "worker": name(q.get("worker"), "worker"),
            "owner": name(q.get("owner"), "owner"),
            "since": number(q.get("since"), "since", 0, 1e11),
        }
        limit = clamp_limit(q.get("limit"))
        try:
            tasks, more = await asyncio.to_thread(self.store.tasks, filters, limit, q.get("cursor"))
        except ValueError as e:  # a cursor no page gave
            raise Refused(400, str(e)) from None
        return answer({"tasks": tasks, "next_cursor": more})

    async def show_task(self, request: Request) -> Response:
        self.who(request, "read")
        self.active()
        params(request, ())
        task_id = name(request.path_params["task_id"], "the task id")
        task = await asyncio.to_thread(self.store.task, task_id or "")
        if task is None:
            raise Refused(404, f"no task {task_id!r} in the ledger")
        return answer(task)

    async def workers(self, request: Request) -> Response:
        self.who(request, "read")
        params(request, ())
        snapshot = self.active()
        return answer({"at": snapshot.at, "workers": list(snapshot.workers)})

    async def stats(self, request: Request) -> Response:
        self.who(request, "read")
        params(request, ())
        s = self.active()
        counts = await asyncio.to_thread(self.store.counts)
        slots = sum(w["slots"] for w in s.workers if w["status"] == "alive")
        return answer(
            {
                "at": s.at,
                "pending": s.pending,
                "in_flight": s.in_flight,
                "running": s.running,
                "workers": len(s.workers),
                "slots": slots,
                "counters": s.counters,
                "rounds": s.rounds,
                "tasks_by_state": counts,
            }
        )

    async def rounds(self, request: Request) -> Response:
        self.who(request, "read")
        q = params(request, ("limit",))
        self.active()
        limit = max(1, min(len(self.board.samples) or 1, clamp_limit(q.get("limit") or "120")))
        samples = [asdict(s) for s in self.board.history()[-limit:]]
        reasons = await asyncio.to_thread(self.store.reasons)
        waits = await asyncio.to_thread(self.store.waits)
        return answer({"samples": samples, "unplaced_by_reason": reasons, "waits": waits})

    async def events(self, request: Request) -> Response:
        self.who(request, "read")
        params(request, ())
        self.active()
        if self.streams >= MAX_STREAMS:
            raise Refused(503, f"too many event streams open (at most {MAX_STREAMS})")
        return StreamingResponse(
            self._stream(request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, request: Request) -> AsyncIterator[bytes]:
        self.streams += 1
        try:
            seq = 0
            yield b": matchmaker events\n\n"
            while not await request.is_disconnected():
                latest = self.board.latest
                if latest is not None and latest.seq != seq:
                    seq = latest.seq
                    data = {
                        "at": latest.at,
                        "pending": latest.pending,
                        "in_flight": latest.in_flight,
                        "running": latest.running,
                        "counters": latest.counters,
                        "workers": list(latest.workers),
                        "sample": asdict(self.board.samples[-1]) if self.board.samples else None,
                    }
                    yield b"event: snapshot\ndata: " + orjson.dumps(data) + b"\n\n"
                await asyncio.sleep(0.25)
        finally:
            self.streams -= 1

    # writes ----------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        self.who(request, "submit")
        params(request, ())
        snapshot = self.active()
        body = await json_body(request)
        body = {"v": 1, "kind": "submit", "id": uuid.uuid4().hex, **body}
        if body.get("kind") != "submit":
            raise Refused(400, "kind must be submit here")
        try:
            message = decode(orjson.dumps(body), expect=("submit",))
        except MessageError as e:
            raise Refused(400, str(e)) from None
        assert isinstance(message, TaskRequest)
        await asyncio.to_thread(self.send, [encode(message)])
        reply = {"id": message.id, "state": "submitted"}
        if not any(message.type in w["capabilities"] for w in snapshot.workers):
            reply["warning"] = (
                f"no live worker advertises task type {message.type!r}; it waits until one does"
            )
        return answer(reply, 202)

    async def _open_task(self, request: Request, role: str) -> tuple[dict[str, Any], Any]:
        identity = self.who(request, role)
        params(request, ())
        self.active()
        task_id = name(request.path_params["task_id"], "the task id") or ""
        task = await asyncio.to_thread(self.store.task, task_id)
        if task is None:
            raise Refused(404, f"no task {task_id!r} in the ledger")
        return task, identity

    async def cancel(self, request: Request) -> Response:
        task, identity = await self._open_task(request, "submit")
        if not identity.may("admin") and task.get("owner", None) != identity.owner:
            raise Refused(403, "only an admin may cancel another owner's task")
        if task["state"] not in OPEN_STATES:
            raise Refused(409, f"task {task['id']!r} is {task['state']}: nothing to cancel")
        await asyncio.to_thread(self.send, [encode(Cancel(task["id"]))])
        return answer({"id": task["id"], "state": "cancel requested"}, 202)

    async def retry(self, request: Request) -> Response:
        task, _ = await self._open_task(request, "admin")
        if task["state"] not in ("dead", "cancelled"):
            raise Refused(
                409,
                f"task {task['id']!r} is {task['state']}: only a dead or "
                "cancelled task can be retried",
            )
        await asyncio.to_thread(self.send, [encode_retry(task["id"])])
        return answer({"id": task["id"], "state": "retry requested"}, 202)

    async def drain(self, request: Request) -> Response:
        self.who(request, "admin")
        params(request, ())
        snapshot = self.active()
        worker = name(request.path_params["worker"], "the worker name") or ""
        body = await json_body(request, 4096)
        unknown = sorted(set(body) - {"on", "deadline"})
        if unknown:
            raise Refused(400, f"unknown field {unknown[0]!r} (allowed: on, deadline)")
        on = body.get("on", True)
        if not isinstance(on, bool):
            raise Refused(400, "on must be true or false")
        deadline = body.get("deadline")
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, int | float):
                raise Refused(400, "deadline must be a number of seconds")
            number(str(deadline), "deadline", 0, MAX_TIMEOUT)
            if not on:
                raise Refused(400, "a deadline is for a drain only, not with on: false")
        if on and worker not in {w["name"] for w in snapshot.workers}:
            raise Refused(404, f"no live worker {worker!r}")
        await asyncio.to_thread(self.send, [encode_drain(worker, on, deadline)])
        state = "drain requested" if on else "undrain requested"
        reply: dict[str, Any] = {"worker": worker, "state": state}
        if deadline is not None:
            reply["deadline"] = float(deadline)
        return answer(reply, 202)

    async def openapi(self, request: Request) -> Response:
        params(request, ())
        return answer(document())

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def guarded(handler: Handler, api: Api) -> Handler:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except NotActive:
            return await api.elsewhere(request)
        except Refused as r:
            return error(r.status, r.text, r.headers)
        except StoreError as e:
            return error(503, str(e))

    return run


def build(config: Any, board: Board) -> Starlette:
    api = Api(config, board)

    def guard(handler: Handler) -> Handler:
        return guarded(handler, api)

    routes = [
        Route("/", api.index),
        Route("/openapi.json", guard(api.openapi)),
        Route("/v1/tasks", guard(api.list_tasks), methods=["GET"]),
        Route("/v1/tasks", guard(api.submit), methods=["POST"]),
        Route("/v1/tasks/{task_id}", guard(api.show_task), methods=["GET"]),
        Route("/v1/tasks/{task_id}/cancel", guard(api.cancel), methods=["POST"]),
        Route("/v1/tasks/{task_id}/retry", guard(api.retry), methods=["POST"]),
        Route("/v1/workers", guard(api.workers), methods=["GET"]),
        Route("/v1/workers/{worker}/drain", guard(api.drain), methods=["POST"]),
        Route("/v1/stats", guard(api.stats), methods=["GET"]),
        Route("/v1/rounds", guard(api.rounds), methods=["GET"]),
        Route("/v1/events", guard(api.events), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        text = {404: "no such path", 405: "this method is not allowed here"}.get(
            status, "the request could not be served"
        )
        return error(status, text)

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("the API failed on %s", request.url.path)
        return error(500, "the API failed on this request (see the scheduler's log)")

    return Starlette(
        routes=routes, exception_handlers={HTTPException: http_error, Exception: crash}
    )
