"""The tiny progress bar: drawn on a terminal (or when forced), silent in a pipe."""

from __future__ import annotations

import io

from benchmarks.progress import Progress


def test_forced_bar_draws_share_and_label_then_ends_the_line() -> None:
    stream = io.StringIO()
    with Progress(4, "solver 10x1", stream=stream, width=8, force=True) as bar:
        bar.advance(2)
    text = stream.getvalue()
    assert "[####....]  50%  solver 10x1" in text
    assert text.endswith("\n") and "[########] 100%" in text


def test_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress(10, "quiet", stream=stream) as bar:
        bar.advance(5)
    assert stream.getvalue() == ""
