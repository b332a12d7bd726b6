"""Results: workers' reports from ``mm.results`` applied to the book, and the speeds they teach."""

from __future__ import annotations

import logging

from matchmaker.messages import (
    MessageError,
    TaskResult,
    decode_results,
    encode,
)
from matchmaker.scheduler.state import FATAL, Core
from matchmaker.wire import broker

log = logging.getLogger("matchmaker.service")


class Results(Core):
    """The scheduler's intake of results."""

    def _take_results(self) -> None:
        """Apply the buffered results, each settled in ``result_acks``; invalid ones (and
        any whose handling fails, ``_internal_error``) are set aside for ``mm.dead``."""
        if not self.results:
            return
        now = self.clock.time()
        settle = self.result_acks.settle
        for d in self.results:
            try:
                sender = self.senders.owner(d.user)
                message = decode_results(d.body)
            except MessageError as error:
                self._reject_result(d.body, str(error))
                settle(d.tag)
                continue
            except FATAL:
                raise
            except Exception as error:
                self._internal_error(broker.RESULTS, d.body, error)
                settle(d.tag)
                continue
            for n, (body, reason) in enumerate(message.invalid):
                self._reject_result(body, reason, d.body + b"\0invalid %d" % n)
            for n, result in enumerate(message.items):
                origin = d.body + b"\0item %d" % n
                try:
                    forged = self.senders.reporting(sender, result.worker)
                    if forged is not None:
                        self.book.ignore(result, now, forged)
                        reason = f"result for {result.id}: {forged}"
                        self._reject_result(encode(result), reason, origin)
                        continue
                    self._apply_result(result, now)
                except FATAL:
                    raise
                except Exception as error:
                    self._internal_error(broker.RESULTS, encode(result), error, origin)
            settle(d.tag)
        self.results.clear()
        self.dirty = True

    def _apply_result(self, result: TaskResult, now: float) -> None:
        task = self.book.open_task(result.id)
        task_type = task.request.type if task is not None else ""
        outcome = self.book.result(result, now)
        if outcome == "succeeded":
            self._observe_run(result, task_type)
        if outcome == "ignored":
            log.info(
                "result for %s attempt %d from %s ignored",
                result.id,
                result.attempt,
                result.worker,
            )

    def _observe_run(self, result: TaskResult, task_type: str) -> None:
        """A succeeded run's time teaches the worker's speed on its type (a worker's report of
        its own times is trusted as far as its own placements go)."""
        if result.started_at is None or result.finished_at is None:
            return
        try:
            self.rates.observe(result.worker, task_type, result.finished_at - result.started_at)
        except ValueError:
            return  # a negative or absurd time: nothing learned
        self.timed.add(result.worker)

    def _reject_result(self, body: bytes, reason: str, origin: bytes | None = None) -> None:
        log.warning("rejected a result: %s", reason)
        self.rejects.append((broker.RESULTS, body, reason, body if origin is None else origin))
