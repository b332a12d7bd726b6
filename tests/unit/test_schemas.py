"""The JSON Schema files in docs/schemas/ are current, and accept what the decoder accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from matchmaker.messages import Batch, MessageError, decode
from matchmaker.schemas import SCHEMAS, render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
INTEGER_FIELDS = {"priority", "max_attempts", "attempt"}

VALID: dict[str, dict[str, Any]] = {
    "submit": {
        "v": 1,
        "kind": "submit",
        "id": "t-1",
        "type": "sleep",
        "payload": {"seconds": 1},
        "priority": 5,
        "constraints": {"site": "iu", "gpu": {">=": 1}, "zone": ["a", "b"]},
        "preferences": {"site": ["iu"]},
        "max_attempts": 3,
        "timeout": 60,
    },
    "cancel": {"v": 1, "kind": "cancel", "id": "t-1"},
    "retry": {"v": 1, "kind": "retry", "id": "t-1"},
    "drain": {"v": 1, "kind": "drain", "worker": "w1", "on": False},
    "dispatch": {
        "v": 1,
        "kind": "dispatch",
        "id": "t-1",
        "attempt": 2,
        "type": "sleep",
        "payload": {},
        "deadline": 1.7e9,
    },
    "result": {
        "v": 1,
        "kind": "result",
        "id": "t-1",
        "attempt": 1,
        "worker": "w1",
        "state": "succeeded",
        "started_at": 1.7e9,
        "finished_at": 1.7e9,
        "received_at": None,
        "output": {"n": 1},
        "error": None,
    },
}
VALID["status"] = {"v": 1, "kind": "status", "ids": ["t-1", "t-2"], "ref": "r1"}
VALID["notice"] = {
    "v": 1,
    "kind": "notice",
    "id": "t-1",
    "state": "succeeded",
    "attempt": 1,
    "worker": "w1",
    "at": 1.7e9,
    "output": {"n": 1},
    "error": None,
    "ref": None,
}
VALID["notices"] = {"v": 1, "kind": "notices", "notices": [VALID["notice"]]}
VALID["dispatches"] = {"v": 1, "kind": "dispatches", "dispatches": [VALID["dispatch"]]}
VALID["results"] = {"v": 1, "kind": "results", "results": [VALID["result"]]}

# Strings without lone surrogates (JSON cannot carry them) and without newlines: Python's
# ``re.search`` lets ``$`` match before a trailing newline, where ECMA-262 (the schemas' regex
# dialect) and the decoder do not.
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | st.sampled_from(["w1", "t-2", "sleep", "running", "", "a" * 129, ">=", "=="])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT | st.sampled_from(
        [">=", "<", "site", "seconds"]), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


def accepted_by_decoder(message: dict[str, Any]) -> bool:
    """Whole: a batch with an invalid item is taken, that item refused (``Batch.invalid``)."""
    try:
        decoded = decode(orjson.dumps(message))
    except MessageError:
        return False
    return not (isinstance(decoded, Batch) and decoded.invalid)


def accepted_by_schema(message: dict[str, Any]) -> bool:
    kind = message.get("kind", "submit")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        return False
    return Draft202012Validator(SCHEMAS[kind]).is_valid(message)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_files_in_docs_are_current(kind: str) -> None:
    path = DOCS / f"{kind}.schema.json"
    assert path.read_text() == render(SCHEMAS[kind]), (
        "run: python -m matchmaker.schemas docs/schemas"
    )


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_schemas_are_valid_json_schema(kind: str) -> None:
    Draft202012Validator.check_schema(SCHEMAS[kind])


@pytest.mark.parametrize("kind", sorted(VALID))
def test_a_valid_message_passes_both(kind: str) -> None:
    assert accepted_by_decoder(VALID[kind])
    assert accepted_by_schema(VALID[kind])


def _changed(kind: str, key: str, value: Any, drop: bool, in_batch: bool) -> dict[str, Any]:
    message = orjson.loads(orjson.dumps(VALID[kind]))
    target = message
    if in_batch and kind in ("dispatch", "result"):
        message = orjson.loads(
            orjson.dumps(VALID[kind + "es" if kind == "dispatch" else "results"])
        )
        target = message[next(k for k in message if k not in ("v", "kind"))][0]
    if drop:
        target.pop(key, None)
    else:
        target[key] = value
    return message


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(sorted(VALID)),
    key_choice=st.integers(0, 20),
    value=JSON,
    drop=st.booleans(),
    in_batch=st.booleans(),
)
def test_schema_and_decoder_agree_on_one_changed_field(
    kind: str, key_choice: int, value: Any, drop: bool, in_batch: bool
) -> None:
    keys = sorted(VALID[kind])
    key = keys[key_choice % len(keys)]
    if key in INTEGER_FIELDS and isinstance(value, float) and value.is_integer():
        return  # JSON Schema counts 1.0 as an integer; the decoder does not (module docstring)
    message = _changed(kind, key, value, drop, in_batch)
    assert accepted_by_decoder(message) == accepted_by_schema(message), message
