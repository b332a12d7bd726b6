"""Deliveries in, Jobs out: what the broker hands a worker, checked and given to the Runner.

Push mode consumes ``mm.worker.<name>`` and its control queue
``mm.control.<name>``, which the scheduler (or the setup) binds to
``mm.control`` with ``cancel.<name>``; a worker may only read its own queues.
A ``dispatches`` message holds what one round placed here: its invalid items
are dead-lettered, the others become Jobs (run at most ``slots`` at once by
the Runner), and the delivery is acked once every item in it is reported or
dead-lettered (``workers.acks``). A ``cancel`` on the control queue cancels
the attempt held, or is remembered for a dispatch still on its way.

Pull mode consumes the ``mm.pull.<type>`` queues of its capabilities; a
request this worker may run becomes a Job, one it cannot meet is handed back
(``workers.pull``).

A redelivery of an attempt already held joins it; one already reported has
its result sent again (the scheduler may not have recorded it) or is acked.
A message that does not decode is dead-lettered with its reason.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from matchmaker.messages import (
    Cancel,
    MessageError,
    TaskDispatch,
    TaskRequest,
    decode,
    decode_dispatches,
)
from matchmaker.models import Worker as WorkerModel
from matchmaker.wire import amqp
from matchmaker.wire.broker import CONTROL
from workers.acks import Channels
from workers.config import WorkerConfig
from workers.pull import HandBack, as_dispatch, refusal
from workers.reports import Letter, Reporter
from workers.runner import Delivery, Job, Runner
from workers.stats import Stats
from workers.tasks.base import TaskContext

log = logging.getLogger("workers.runtime")  # the worker's one log, as operators filter it

REMEMBER_CANCELS = 10_000  # cancels for tasks not (yet) held, applied when they arrive


class Intake:
    """The consumer callbacks: dispatches (push), requests (pull), and cancels."""

    def __init__(
        self,
        config: WorkerConfig,
        runner: Runner,
        stats: Stats,
        reports: Reporter,
        hand_back: HandBack,
    ) -> None:
        self.config = config
        self.runner = runner
        self.stats = stats
        self.reports = reports
        self.hand_back = hand_back
        self._model = WorkerModel(
            config.name, config.capabilities, config.slots, attributes=config.attributes
        )
        self._cancels: OrderedDict[str, None] = OrderedDict()

    def on_message(
        self,
        ch: Channels,
        queue: str,
        _channel: amqp.Channel,
        method: amqp.Deliver,
        _props: amqp.Properties,
        body: bytes,
    ) -> None:
        """A delivery from ``queue`` on ``ch``'s consuming channel."""
        ch.unacked.add(method.delivery_tag)
        if self.config.mode == "push":
            self._take_dispatches(ch, queue, method.delivery_tag, body)
        else:
            self._take_request(ch, queue, method.delivery_tag, body)

    def on_control(
        self, _channel: amqp.Channel, _method: amqp.Deliver, _props: Any, body: bytes
    ) -> None:
        """A message on the control queue (auto-acked): a ``cancel``."""
        try:
            message = decode(body, expect=("cancel",))
        except MessageError as error:
            self._reject(body, str(error), CONTROL, None)
            return
        assert isinstance(message, Cancel)
        held = self.runner.cancel(message.id)
        if not held:  # its dispatch may still be on the way: cancel it on arrival
            self._cancels[message.id] = None
            if len(self._cancels) > REMEMBER_CANCELS:
                self._cancels.popitem(last=False)
        log.info("cancel received id=%s held=%d", message.id, held)

    def _take_dispatches(self, ch: Channels, queue: str, tag: int, body: bytes) -> None:
        """A ``dispatch`` or a ``dispatches`` batch: its invalid items dead-lettered, the
        others run; the delivery is acked once each of them is done with."""
        try:
            batch = decode_dispatches(body)
        except MessageError as error:
            self.stats.received += 1
            self._reject(body, str(error), queue, Delivery(ch.session, tag))
            return
        delivery = Delivery(ch.session, tag, len(batch.items) + len(batch.invalid))
        self.stats.received += delivery.parts
        for letter, why in batch.invalid:
            self._reject(letter, why, queue, delivery)
        for dispatch in batch.items:
            self._accept(ch, dispatch, delivery)

    def _take_request(self, ch: Channels, queue: str, tag: int, body: bytes) -> None:
        """Pull mode: a request from a shared queue, run if this worker may, else handed back."""
        delivery = Delivery(ch.session, tag)
        self.stats.received += 1
        try:
            request = decode(body, expect=("submit",))
        except MessageError as error:
            self._reject(body, str(error), queue, delivery)
            return
        assert isinstance(request, TaskRequest)
        reason = refusal(request, self._model)
        if reason is not None:
            self.hand_back(request, reason, Letter(body, reason, queue, delivery, requeue=True))
            return
        self._accept(ch, as_dispatch(request), delivery)

    def _accept(self, ch: Channels, dispatch: TaskDispatch, delivery: Delivery) -> None:
        key = (dispatch.id, dispatch.attempt)
        held = self.runner.find(key)
        if held is not None:
            self.stats.redelivered += 1
            log.info("redelivery joins the held task id=%s attempt=%d", *key)
            held.deliveries.append(delivery)
            return
        if self.runner.seen(key):
            self.stats.redelivered += 1
            if self.runner.replay(key, delivery):
                log.info("redelivery of a reported task: result sent again id=%s attempt=%d", *key)
            else:
                log.info("redelivery of a reported task acked id=%s attempt=%d", *key)
                ch.done_with([delivery])
            return
        context = TaskContext(
            task_id=dispatch.id,
            attempt=dispatch.attempt,
            worker=self.config.name,
            sandbox=self.config.sandbox_dir,
            deadline=dispatch.deadline,
            aurora_url=self.config.aurora_url,
            stage_roots=self.config.stage_roots,
            allow_net=self.config.allow_net,
            commands=self.config.commands,
            limits=self.config.limits,
            type=dispatch.type,
        )
        if dispatch.id in self._cancels:
            context.cancelled.set()
        self.runner.start(Job(dispatch, context, [delivery]))

    def _reject(self, body: bytes, reason: str, source: str, delivery: Delivery | None) -> None:
        log.warning("message rejected to the dead-letter queue source=%s reason=%r", source, reason)
        self.reports.add(Letter(body, reason, source, delivery))
