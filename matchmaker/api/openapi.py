"""The OpenAPI 3 document of the ``/v1`` API."""

from __future__ import annotations

from typing import Any

ERROR = {
    "description": '{"error": one sentence}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _op(
    summary: str,
    role: str,
    params: list[str] | None = None,
    body: bool = False,
    status: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs the `{role}` role.",
        "responses": {
            status: {"description": "done", "content": {"application/json": {}}},
            "400": ERROR,
            "401": ERROR,
            "403": ERROR,
            "503": ERROR,
        },
    }
    if params:
        op["parameters"] = [
            {"name": p, "in": "query", "required": False, "schema": {"type": "string"}}
            for p in params
        ]
    if body:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return op


def _path(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"},
    }


def document() -> dict[str, Any]:
    task_id, worker = [_path("task_id")], [_path("worker")]
    paths: dict[str, Any] = {
        "/v1/tasks": {
            "get": _op(
                "List tasks, newest first, paged by next_cursor",
                "read",
                ["state", "type", "worker", "owner", "since", "limit", "cursor"],
            ),
            "post": _op(
                "Submit a task (a submit message without v and kind)",
                "submit",
                body=True,
                status="202",
            ),
        },
        "/v1/tasks/{task_id}": {
            "get": {
                **_op("A task: state, attempts, history, output, logs, why it waits", "read"),
                "parameters": task_id,
            }
        },
        "/v1/tasks/{task_id}/cancel": {
            "post": {
                **_op("Cancel an open task", "submit (own) or admin", status="202"),
                "parameters": task_id,
            }
        },
        "/v1/tasks/{task_id}/retry": {
            "post": {**_op("Run a dead task again", "admin", status="202"), "parameters": task_id}
        },
        "/v1/workers": {
            "get": _op("Live workers: capabilities, slots, running, site, status", "read")
        },
        "/v1/workers/{worker}/drain": {
            "post": {
                **_op(
                    "Drain a worker (body: on, false undrains; deadline, seconds: then its tasks "
                    "are cancelled there and run elsewhere)",
                    "admin",
                    body=True,
                    status="202",
                ),
                "parameters": worker,
            }
        },
        "/v1/stats": {"get": _op("Counters and gauges", "read")},
        "/v1/rounds": {
            "get": _op(
                "Recent rounds per interval, unplaced tasks by reason, waits", "read", ["limit"]
            )
        },
        "/v1/events": {
            "get": {
                **_op("Server-sent events: a snapshot event per change", "read"),
                "responses": {
                    "200": {"description": "an event stream", "content": {"text/event-stream": {}}}
                },
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "matchmaker scheduler API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
