"""Two tasks a science gateway would chain: count the words of documents, then aggregate.

``wordcount`` counts the words of one document (given inline as ``text``, or as
``path``, a file inside the worker's sandbox) and returns the counts of its
``top`` most frequent words; ``aggregate`` merges the outputs of several
``wordcount`` tasks. Each writes a line or two to its attempt's log
(``python -m matchmaker logs <id>``).

A worker loads them from the installed package's entry points (``--caps
wordcount,aggregate``) or, without installing it, with ``--tasks gateway_tasks``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from workers import TaskContext, TaskError, task

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
MAX_TEXT = 1 << 20  # characters of one document
MAX_TOP = 1000
MAX_PARTS = 1000


def _top(payload: dict[str, Any]) -> int:
    top = payload.get("top", 10)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise TaskError(f"'top' must be an integer from 1 to {MAX_TOP}")
    return top


def _document(payload: dict[str, Any], context: TaskContext) -> str:
    if "text" in payload:
        text = payload["text"]
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise TaskError(f"'text' must be a string of at most {MAX_TEXT} characters")
        return text
    relative = payload.get("path")
    if not isinstance(relative, str) or not relative or relative.startswith("/"):
        raise TaskError("give 'text', or 'path': a file relative to the worker's sandbox")
    root = context.sandbox.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise TaskError(f"'path' {relative!r} leaves the sandbox")
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            return file.read(MAX_TEXT)
    except OSError as error:
        raise TaskError(f"cannot read {relative!r}: {error.strerror or error}") from None


@task("wordcount")
def wordcount(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """``{"text": "..."}`` or ``{"path": "docs/a.txt"}``, optional ``top`` (10) ->
    ``{"words": n, "distinct": n, "counts": {word: count}}`` (the top words)."""
    top = _top(payload)
    counts = Counter(word.lower() for word in WORD.findall(_document(payload, context)))
    words = sum(counts.values())
    context.logger.info("counted %d words, %d distinct", words, len(counts))
    return {"words": words, "distinct": len(counts), "counts": dict(counts.most_common(top))}


@task("aggregate")
def aggregate(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """``{"parts": [wordcount output, ...]}``, optional ``top`` (10) ->
    ``{"documents": n, "words": n, "counts": {word: count}}`` (the top words overall)."""
    top = _top(payload)
    parts = payload.get("parts")
    if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_PARTS:
        raise TaskError(f"'parts' must be a list of 1 to {MAX_PARTS} wordcount outputs")
    total: Counter[str] = Counter()
    words = 0
    for n, part in enumerate(parts):
        counts = part.get("counts") if isinstance(part, dict) else None
        if not isinstance(counts, dict) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts.values()
        ):
            raise TaskError(f"parts[{n}] is not a wordcount output (no 'counts' of integers)")
        total.update(counts)
        words += part.get("words", 0) if isinstance(part.get("words"), int) else 0
        if context.cancelled.is_set():
            raise TaskError("aggregate: cancelled")
    print(f"merged {len(parts)} documents, {words} words", file=context.log)
    return {"documents": len(parts), "words": words, "counts": dict(total.most_common(top))}
