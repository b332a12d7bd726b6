"""Intake: requests from ``mm.requests`` validated and recorded, cancels, retries, drains,
and status requests (answered through ``matchmaker/notices.py``)."""

from __future__ import annotations

import logging

from matchmaker.messages import (
    MAX_MESSAGE_BYTES,
    Cancel,
    Drain,
    MessageError,
    Retry,
    Status,
    TaskRequest,
    check_dispatchable,
    decode,
)
from matchmaker.scheduler.state import FATAL, Core
from matchmaker.wire import broker

log = logging.getLogger("matchmaker.service")


class Intake(Core):
    """The scheduler's intake of requests."""

    def _take_requests(self, turn: bool) -> None:
        """Take in the buffered requests: new tasks recorded pending, invalid ones set
        aside for ``mm.dead``, each settled in ``request_acks``. Outside a full ``turn``
        (between turns) it stops before a cancel or a drain, which waits, with what
        came after it, for the turn. A request whose handling fails in any other way
        is dead-lettered with the error (``_internal_error``); the rest go on."""
        now = self.clock.time()
        new: dict[str, tuple[TaskRequest, str, bytes]] = {}
        taken = 0
        settle = self.request_acks.settle
        for d in self.requests:
            try:
                owner = self.senders.owner(d.user)
                message = decode(d.body, expect=("submit", "cancel", "retry", "drain", "status"))
                if isinstance(message, TaskRequest):  # any type: it waits for a worker of it
                    if len(d.body) > MAX_MESSAGE_BYTES // 8:  # only a large one can grow past
                        check_dispatchable(message)
                    first = new.get(message.id)
                    if first is None:
                        refusal = self.quotas.admit(owner, self._role(owner), message.priority)
                        if refusal is not None:
                            raise MessageError(refusal)
                        new[message.id] = (message, owner, d.body)
                    elif first[1] != owner and not self.senders.privileged(owner):
                        raise MessageError(f"id {message.id} belongs to another owner")
                elif not turn:
                    break
                else:
                    self._submit(new, now)  # a cancel may name a task submitted just before it
                    if isinstance(message, Cancel):
                        self._cancel(message.id, now, owner)
                    elif isinstance(message, Retry):
                        self._retry(message.id, now, owner)
                    elif isinstance(message, Drain):
                        self._drain(message, now, owner)
                    elif isinstance(message, Status):  # client hook
                        self.notices.answer(message, owner, self.book, self.ledger)
            except MessageError as error:
                log.warning("rejected a request: %s", error)
                self.rejects.append((broker.REQUESTS, d.body, str(error), d.body))
                self.notices.refused(d.user, d.body, str(error))  # client hook
            except FATAL:
                raise
            except Exception as error:
                self._internal_error(broker.REQUESTS, d.body, error)
            taken += 1
            settle(d.tag)
        self._submit(new, now)
        del self.requests[:taken]

    def _submit(self, new: dict[str, tuple[TaskRequest, str, bytes]], now: float) -> None:
        """Record the new tasks in one go; if that fails, one by one, and only the one
        that fails is dead-lettered. A known id of another owner is refused (a trusted
        sender's is a duplicate, as it always was)."""
        if not new:
            self.quotas.settle()
            return
        items = list(new.values())
        new.clear()
        self.dirty = True
        try:
            self._submit_owned(items, now)
        except FATAL:
            raise
        except Exception:
            for item in items:
                try:
                    self._submit_owned([item], now)
                except FATAL:
                    raise
                except Exception as error:
                    self._internal_error(broker.REQUESTS, item[2], error)
        self.quotas.settle()

    def _role(self, owner: str) -> str:
        """The quota role of a request's sender: ``admin`` or ``client``."""
        return "admin" if self.senders.admin(owner) else "client"

    def _submit_owned(self, items: list[tuple[TaskRequest, str, bytes]], now: float) -> None:
        _, clashes = self.book.submit_owned([(r, owner) for r, owner, _ in items], now)
        if not clashes:
            return
        by_id = {r.id: (owner, body) for r, owner, body in items}
        for request, _ in clashes:
            owner, body = by_id[request.id]
            if not self.senders.privileged(owner):
                reason = f"id {request.id} belongs to another owner"
                log.warning("rejected a request: %s", reason)
                self.rejects.append((broker.REQUESTS, body, reason, body))
                self.notices.refused(owner, body, reason)  # client hook

    def _cancel(self, task_id: str, now: float, sender: str) -> None:
        owner = self.book.owner(task_id)
        if owner is not None and owner != sender and not self.senders.admin(sender):
            raise MessageError(
                f"cancel of {task_id} refused: the task belongs to another owner "
                "(only an admin may cancel it)"
            )
        was_open, worker = self.book.cancel(task_id, now)
        if worker and self.transport is not None:
            self.transport.cancel(worker, task_id)
        log.info("cancel %s: %s", task_id, "cancelled" if was_open else "not open, nothing to do")
        self.dirty = True

    def _retry(self, task_id: str, now: float, sender: str) -> None:
        row = self.ledger.get(task_id)
        if row is None:
            raise MessageError(f"retry of {task_id} refused: no such task")
        if row.owner != sender and not self.senders.admin(sender):
            raise MessageError(
                f"retry of {task_id} refused: the task belongs to another owner "
                "(only an admin may retry it)"
            )
        self.book.retry(row, now)
        log.info("retry %s: pending again as attempt %d", task_id, row.attempt + 1)
        self.dirty = True

    def _drain(self, message: Drain, now: float, sender: str) -> None:
        if not self.senders.admin(sender):
            raise MessageError(f"drain of {message.worker} refused: only an admin may drain")
        if message.on:
            self.drained.add(message.worker)
        else:
            self.drained.discard(message.worker)
        self.ledger.set_drained(message.worker, message.on, now)
        log.info("worker %s %s", message.worker, "drained" if message.on else "back in service")
        self.dirty = True
