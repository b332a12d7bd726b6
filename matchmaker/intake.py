"""The intake stage, in a process of its own: requests in, validated, passed on, acked.

The scheduler starts it once it leads (``IntakeProcess.start``) and hands it
the ``Config`` as one pickle on its standard input. The intake consumes
``mm.requests``; for each batch it

1. validates every request (invalid, oversize or unknown-type ones go to
   ``mm.dead`` with the reason and count as ``("rejected", n)``);
2. passes the valid ones on, in arrival order, as one pickle on its standard
   output: ``(seq, [("submit", [TaskRequest, ...]) | ("cancel", Cancel) |
   ("drain", Drain) | ("rejected", n), ...])``;
3. acks the batch once the scheduler has written back, on the intake's
   standard input, a ``seq`` at least as high: its ledger holds the batch.

The scheduler stays the only writer of the ledger, and nothing is acked
before the ledger has it: if either process dies, the unacked requests come
again, and the ledger's ids make the second submit a no-op. The split puts
the broker's incoming frames and JSON validation on one core and the ledger,
rounds and dispatch on the other. The process gets SIGKILL when its
scheduler dies, and leaves on SIGTERM.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import pika
import pika.exceptions

from matchmaker import broker, logs
from matchmaker.config import Config
from matchmaker.messages import Cancel, Drain, MessageError, TaskRequest, decode
from membership.agent import die_with_parent

log = logging.getLogger("matchmaker.intake")

PREFETCH = 4000  # twice the batches that may wait for the ledger at once
BATCH = 2000
IDLE_WAIT = 0.05

Item = tuple[Any, ...]


def _read_pickles(pipe: BinaryIO, put: Callable[[Any], None], wake: Callable[[], None]) -> None:
    """Reader thread: every object pickled onto ``pipe`` goes to ``put``; then a last wake."""
    while True:
        try:
            put(pickle.load(pipe))
        except (EOFError, OSError, pickle.UnpicklingError):
            break
        wake()
    wake()


def _waker(connection: pika.BlockingConnection) -> Callable[[], None]:
    """A thread-safe nudge that ends the connection's current ``process_data_events`` wait."""

    def wake() -> None:
        with contextlib.suppress(Exception):  # closed or closing: nothing to wake
            connection.add_callback_threadsafe(lambda: None)

    return wake


class Intake:
    """The loop of the intake process."""

    def __init__(self, config: Config, out: BinaryIO, committed: BinaryIO) -> None:
        self.config = config
        self.out = out
        self.committed_pipe = committed
        self.committed = 0  # highest batch seq the scheduler has in its ledger
        self.buffer: list[tuple[int, bytes]] = []
        self.waiting: collections.deque[tuple[int, int]] = collections.deque()  # (seq, tag)
        self.seq = 0
        self.stopping = False

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def _on_committed(self, seq: int) -> None:
        self.committed = max(self.committed, seq)

    def serve(self) -> None:
        connection = broker.connect(self.config.broker_url, attempts=30, name="matchmaker-intake")
        wake = _waker(connection)
        threading.Thread(
            target=_read_pickles,
            args=(self.committed_pipe, self._on_committed, wake),
            name="committed-reader",
            daemon=True,
        ).start()
        try:
            channel = connection.channel()
            broker.declare_core(channel)
            channel.basic_qos(prefetch_count=PREFETCH)
            channel.basic_consume(
                broker.REQUESTS, lambda _c, m, _p, body: self.buffer.append((m.delivery_tag, body))
            )
            ack = broker.queued_ack(channel)
            while not self.stopping:
                connection.process_data_events(time_limit=0 if self.buffer else IDLE_WAIT)
                while self.buffer:
                    batch, self.buffer = self.buffer[:BATCH], self.buffer[BATCH:]
                    self._forward(self._take(batch, channel), batch[-1][0])
                self._ack(ack)
        finally:
            if connection.is_open:
                connection.close()

    def _take(self, batch: list[tuple[int, bytes]], channel: Any) -> list[Item]:
        """The batch validated, as items in arrival order (runs of submits joined)."""
        items: list[Item] = []
        rejected = 0
        for _, body in batch:
            try:
                message = decode(body, expect=("submit", "cancel", "drain"))
                if isinstance(message, TaskRequest) and message.type not in self.config.task_types:
                    raise MessageError(
                        f"unknown task type {message.type!r} (this scheduler knows "
                        f"{', '.join(self.config.task_types)})"
                    )
            except MessageError as error:
                log.warning("rejected a request: %s", error)
                broker.dead_letter(channel, body, str(error), broker.REQUESTS)
                rejected += 1
                continue
            if isinstance(message, TaskRequest):
                if items and items[-1][0] == "submit":
                    items[-1][1].append(message)
                else:
                    items.append(("submit", [message]))
            elif isinstance(message, Cancel):
                items.append(("cancel", message))
            elif isinstance(message, Drain):
                items.append(("drain", message))
        if rejected:
            items.append(("rejected", rejected))
        return items

    def _forward(self, items: list[Item], last_tag: int) -> None:
        self.seq += 1
        pickle.dump((self.seq, items), self.out, protocol=pickle.HIGHEST_PROTOCOL)
        self.out.flush()
        self.waiting.append((self.seq, last_tag))

    def _ack(self, ack: Callable[[int, bool], None]) -> None:
        """Ack every batch the scheduler's ledger holds, in one frame."""
        tag = 0
        while self.waiting and self.waiting[0][0] <= self.committed:
            tag = self.waiting.popleft()[1]
        if tag:
            ack(tag, True)


def main() -> int:
    """``python -m matchmaker.intake``: started by the scheduler, not by hand."""
    config: Config = pickle.load(sys.stdin.buffer)
    out, sys.stdout = sys.stdout.buffer, sys.stderr  # the pipe carries batches only
    logs.setup(config.log_format, config.log_level)
    intake = Intake(config, out, sys.stdin.buffer)
    signal.signal(signal.SIGTERM, intake.stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scheduler decides when intake stops
    try:
        intake.serve()
    except broker.BrokerError as error:
        log.error("intake stopped: %s", error)
        return 1
    except (pika.exceptions.AMQPError, BrokenPipeError) as error:
        log.warning("intake stopped: %s", error.__class__.__name__)
        return 1
    return 0


class IntakeProcess:
    """The scheduler's handle on its intake process: start it, take its batches, confirm them."""

    def __init__(self, config: Config, wake: Callable[[], None]) -> None:
        self.config = config
        self.wake = wake
        self.inbox: queue.SimpleQueue[tuple[int, list[Item]]] = queue.SimpleQueue()
        self.popen: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.taken = 0  # highest batch seq taken from this process
        self.confirmed = 0  # highest seq written back to it

    def start(self) -> None:
        """A new process, with a new inbox: batches of an ended one are never confirmed."""
        self.started = time.time()
        self.inbox = queue.SimpleQueue()
        self.taken = self.confirmed = 0
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "matchmaker.intake"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        assert self.popen.stdin is not None and self.popen.stdout is not None
        pickle.dump(self.config, self.popen.stdin)
        self.popen.stdin.flush()
        threading.Thread(
            target=_read_pickles,
            args=(self.popen.stdout, self.inbox.put, self.wake),
            name="intake-reader",
            daemon=True,
        ).start()
        log.info("intake process %d started", self.popen.pid)

    def take(self) -> list[Item]:
        """The items of every batch read so far, in order."""
        items: list[Item] = []
        while not self.inbox.empty():
            seq, batch = self.inbox.get_nowait()
            self.taken = seq
            items.extend(batch)
        return items

    def confirm(self) -> None:
        """The ledger holds everything taken: the intake may ack it."""
        if self.taken <= self.confirmed or self.popen is None or self.popen.stdin is None:
            return
        self.confirmed = self.taken
        try:
            pickle.dump(self.taken, self.popen.stdin)
            self.popen.stdin.flush()
        except (BrokenPipeError, ValueError):  # ended: its unacked requests come again
            pass

    def pending(self) -> bool:
        return not self.inbox.empty()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


if __name__ == "__main__":
    sys.exit(main())
