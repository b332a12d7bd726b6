"""The wire messages as JSON Schema (draft 2020-12), for clients in other languages.

``python -m matchmaker.schemas DIR`` writes one self-contained file per message kind
(``submit.schema.json``, ...), the files kept in ``docs/schemas/``; a test checks that they
are current and that they accept and refuse what ``messages.decode`` accepts and refuses.

What a schema cannot say, the decoder still checks: how deeply values nest, the 256 KiB
message limit, and that an integer is written without a fraction (``1.0`` is a number here,
not an integer, while JSON Schema counts it as an integer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from matchmaker.messages import (
    MAX_ATTEMPTS,
    MAX_LOG_CHARS,
    MAX_STATUS_IDS,
    MAX_TIMEOUT,
    NAME,
    NOTICE_STATES,
    RESULT_STATES,
    TYPE_NAME,
    VERSION,
)
from matchmaker.models import MAX_PRIORITY

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE = "https://matchmaker.invalid/schemas/"  # an identifier only, never fetched

Schema = dict[str, Any]

NAME_SCHEMA: Schema = {"type": "string", "pattern": f"^{NAME.pattern}$"}
NAME_OR_NULL: Schema = {"type": ["string", "null"], "pattern": f"^{NAME.pattern}$"}
TYPE_SCHEMA: Schema = {
    "type": "string",
    "pattern": f"^{TYPE_NAME.pattern}$",
    "description": "a task type: any name some worker may advertise",
}
SCALAR: Schema = {"type": ["string", "number", "boolean"]}
CONSTRAINTS: Schema = {
    "type": "object",
    "description": "worker attribute -> a value, a non-empty list of values, or comparisons",
    "propertyNames": {"minLength": 1},
    "additionalProperties": {
        "anyOf": [
            SCALAR,
            {"type": "array", "items": SCALAR, "minItems": 1},
            {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"enum": ["==", "!=", "<", "<=", ">", ">="]},
                "additionalProperties": {"type": ["number", "boolean"]},
            },
        ]
    },
}
SECONDS: Schema = {"type": ["number", "null"], "minimum": 0}


def _integer(low: int, high: int) -> Schema:
    return {"type": "integer", "minimum": low, "maximum": high}


def _message(
    kind: str, properties: Schema, required: list[str], *, optional_kind: bool = False
) -> Schema:
    return {
        "$schema": DIALECT,
        "$id": f"{BASE}{kind}.schema.json",
        "title": f"matchmaker {kind} message, version {VERSION}",
        "type": "object",
        "properties": {"v": {"const": VERSION}, "kind": {"const": kind}, **properties},
        "required": ["v", *([] if optional_kind else ["kind"]), *required],
    }


SUBMIT = _message(
    "submit",
    {
        "id": NAME_SCHEMA,
        "type": TYPE_SCHEMA,
        "payload": {"type": "object"},
        "priority": _integer(0, MAX_PRIORITY),
        "constraints": CONSTRAINTS,
        "preferences": CONSTRAINTS,
        "max_attempts": _integer(1, MAX_ATTEMPTS),
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT},
    },
    ["id", "type"],
    optional_kind=True,  # a message without a kind is a submit
)
CANCEL = _message("cancel", {"id": NAME_SCHEMA}, ["id"])
RETRY = _message("retry", {"id": NAME_SCHEMA}, ["id"])
DRAIN = _message(
    "drain",
    {
        "worker": NAME_SCHEMA,
        "on": {"type": "boolean"},
        "deadline": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": MAX_TIMEOUT,
            "description": "seconds after the scheduler receives the drain; then the worker's "
            "tasks are cancelled there and run elsewhere (only with on: true)",
        },
    },
    ["worker"],
)
DRAIN["if"] = {"properties": {"on": {"const": False}}, "required": ["on"]}
DRAIN["then"] = {"properties": {"deadline": {"type": "null"}}}  # no deadline on an undrain
DISPATCH_FIELDS: Schema = {
    "id": NAME_SCHEMA,
    "attempt": _integer(1, MAX_ATTEMPTS),
    "type": NAME_SCHEMA,
    "payload": {"type": "object"},
    "deadline": {"type": "number", "minimum": 0},
}
RESULT_FIELDS: Schema = {
    "id": NAME_SCHEMA,
    "attempt": _integer(1, MAX_ATTEMPTS),
    "worker": NAME_SCHEMA,
    "state": {"enum": list(RESULT_STATES)},
    "started_at": SECONDS,
    "finished_at": SECONDS,
    "received_at": SECONDS,
    "output": {"type": ["object", "null"]},
    "error": {"type": ["string", "null"]},
    "logs": {
        "type": ["string", "null"],
        "description": "the tail of the attempt's captured output (a longer one is cut "
        f"to its last {MAX_LOG_CHARS:,} characters)",
    },
}
STATUS = _message(
    "status",
    {
        "ids": {"type": "array", "items": NAME_SCHEMA, "minItems": 1, "maxItems": MAX_STATUS_IDS},
        "ref": NAME_OR_NULL,
    },
    ["ids"],
)
NOTICE_FIELDS: Schema = {
    "id": NAME_SCHEMA,
    "state": {"enum": list(NOTICE_STATES)},
    "attempt": _integer(0, MAX_ATTEMPTS),
    "worker": NAME_OR_NULL,
    "at": SECONDS,
    "output": {"type": ["object", "null"]},
    "error": {"type": ["string", "null"]},
    "ref": NAME_OR_NULL,
}
NOTICE = _message("notice", NOTICE_FIELDS, ["id", "state"])
DISPATCH = _message("dispatch", DISPATCH_FIELDS, ["id", "attempt", "type", "payload", "deadline"])
RESULT = _message("result", RESULT_FIELDS, ["id", "attempt", "worker", "state"])


def _batch(kind: str, item: Schema) -> Schema:
    """Items are the single messages; their own ``v`` and ``kind``, if any, are not read."""
    fields = {k: v for k, v in item["properties"].items() if k not in ("v", "kind")}
    items = {"type": "object", "properties": fields, "required": item["required"][2:]}
    return _message(kind, {kind: {"type": "array", "minItems": 1, "items": items}}, [kind])


EVENTS = _message(
    "events",
    {
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": NAME_SCHEMA,
                    "state": {"type": "string"},
                    "attempt": {"type": "integer", "minimum": 1},
                    "worker": {"type": ["string", "null"]},
                    "at": {"type": "number"},
                    "note": {"type": ["string", "null"]},
                },
                "required": ["id", "state", "attempt", "worker", "at"],
            },
        }
    },
    ["events"],
)

SCHEMAS: dict[str, Schema] = {
    "submit": SUBMIT,
    "cancel": CANCEL,
    "retry": RETRY,
    "drain": DRAIN,
    "status": STATUS,
    "dispatch": DISPATCH,
    "dispatches": _batch("dispatches", DISPATCH),
    "result": RESULT,
    "results": _batch("results", RESULT),
    "events": EVENTS,
    "notice": NOTICE,
    "notices": _batch("notices", NOTICE),
}


def render(schema: Schema) -> str:
    return json.dumps(schema, indent=2) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, schema in SCHEMAS.items():
        path = directory / f"{kind}.schema.json"
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m matchmaker.schemas DIR")
    for path in write(Path(sys.argv[1])):
        print(path)
