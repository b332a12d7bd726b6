"""Run tasks on a bounded thread pool and keep what each one has to report.

The model: every dispatch the worker holds is a ``Job``. A job is *waiting*
(received, no thread yet), *running* (``started_at`` set) or *finished*
(``final`` set, exactly once, by whoever gets there first: the task's thread
when the function returns, the deadline watchdog, or the shutdown). Jobs with
something new to report are *dirty*; the connection thread takes them in
batches (``take``), publishes, and tells the runner what went out (``sent``).
Only the connection thread touches the broker; task threads only change job
state under the runner's lock and, when a job finishes, call ``wake`` so the
loop flushes soon (a running report waits for the next flush or loop tick).

A task that does not stop once cancelled (by a cancel, its deadline or the
drain) is given ``stop_grace`` seconds; then its job fails as abandoned (if it
has no result yet) and its thread's slot is *withheld*: ``capacity()`` drops
by one, which the worker advertises, and since the thread still holds its
pool place the runner runs at most the remaining slots. When the thread ends
at last, the slot comes back.

A job may hold several deliveries (the same dispatch delivered again after a
reconnect, or twice), and a delivery may be shared by several jobs (a
``dispatches`` message): a delivery is acknowledged once every job it holds
has its final result out.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from matchmaker.identity import redact, redact_json
from matchmaker.messages import MAX_MESSAGE_BYTES, TaskDispatch, TaskResult
from workers.context import TaskContext, TaskError, TaskFunction, TaskLog
from workers.pool import Pool

log = logging.getLogger(__name__)

Key = tuple[str, int]
REMEMBER_DONE = 10_000
REPLAYABLE = 1_000  # of those, the last ones whose final result can be sent again
STOP_GRACE = 5.0  # after a cancel: how long a task gets to stop before its slot is withheld
MAX_OUTPUT_BYTES = MAX_MESSAGE_BYTES - 16 * 1024  # the rest of the result fits beside it


@dataclass(eq=False)
class Delivery:
    """A broker delivery to settle: its connection session, delivery tag, and how many
    dispatches it holds (a ``dispatches`` message holds several; each is one part)."""

    session: int
    tag: int
    parts: int = 1
    left: int = -1  # parts not yet done with
    handed_back: int = 0  # parts withdrawn unstarted

    def __post_init__(self) -> None:
        self.left = self.parts

    def done_with(self, hand_back: bool = False) -> str | None:
        """One part is done (reported, or ``hand_back``: withdrawn unstarted). After the
        last: "nack" (requeue) if every part was handed back, else "ack"; before: None.
        A part handed back beside parts that ran is acked away: the scheduler moves it
        elsewhere when this worker leaves the pool, as it does every task left with it."""
        self.left -= 1
        self.handed_back += hand_back
        if self.left:
            return None
        return "nack" if self.handed_back == self.parts else "ack"


@dataclass(eq=False)
class Job:
    dispatch: TaskDispatch
    context: TaskContext
    deliveries: list[Delivery]
    received_at: float = field(default_factory=time.time)
    started_at: float | None = None
    final: TaskResult | None = None
    running_sent: bool = False
    final_sent: bool = False
    cancel_seen: float | None = None  # when the runner first saw it cancelled while running

    @property
    def key(self) -> Key:
        return (self.dispatch.id, self.dispatch.attempt)

    @property
    def state(self) -> str:
        if self.final is not None:
            return "finished"
        return "running" if self.started_at is not None else "waiting"


@dataclass(frozen=True)
class Report:
    """One message to publish for a job: its running report or its final result."""

    job: Job
    result: TaskResult

    @property
    def final(self) -> bool:
        return self.result.state != "running"


def _check_output(output: dict[str, Any]) -> None:
    """A task's output must travel in a result message: JSON, and not too large."""
    try:
        size = len(orjson.dumps(output, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError as error:
        raise TaskError(f"the task's output is not JSON: {error}") from None
    if size > MAX_OUTPUT_BYTES:
        raise TaskError(
            f"the task's output is {size} bytes, over the {MAX_OUTPUT_BYTES}-byte limit"
        )


def _logs(log: TaskLog, output: dict[str, Any] | None) -> str | None:
    """The attempt's log as it travels: its tail, in the room the output leaves (a log
    written as JSON takes at most twice its bytes: control characters are not kept)."""
    if not log:
        return None
    room = MAX_OUTPUT_BYTES
    if output is not None:
        room -= len(orjson.dumps(output, option=orjson.OPT_NON_STR_KEYS))
    return redact(log.text(limit=max(0, room // 2 - 64)))


class Runner:
    """Up to ``slots`` tasks at once; deadlines, cancellation, and the reports they produce."""

    def __init__(
        self,
        worker: str,
        slots: int,
        registry: Mapping[str, TaskFunction],
        wake: Callable[[], None] = lambda: None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self.worker = worker
        self.registry = registry
        self.wake = wake
        self.slots = slots
        self.stop_grace = stop_grace
        self.observer: Callable[[str, str, float], None] | None = None  # type, state, seconds
        self._pool = Pool(slots, f"task-{worker}")
        self._active: set[Job] = set()  # jobs whose function is running on a thread
        self._withheld: set[Job] = set()  # of those, the ones that would not stop
        self._lock = threading.Lock()
        self._jobs: dict[Key, Job] = {}
        self._dirty: dict[Key, Job] = {}
        self._done: OrderedDict[Key, None] = OrderedDict()
        self._replayable: OrderedDict[Key, Job] = OrderedDict()

    # -- intake (connection thread) ------------------------------------------------------

    def find(self, key: Key) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def seen(self, key: Key) -> bool:
        """Whether this dispatch's final result already went out (a redelivery)."""
        with self._lock:
            return key in self._done

    def replay(self, key: Key, delivery: Delivery) -> bool:
        """A redelivery of a dispatch whose final result went out: the result is sent again
        and the delivery acked once it is in the broker (a scheduler that restarted before
        recording the dispatch refused the first report and has dispatched it again).
        False if the result is no longer kept (the caller acks the redelivery as seen)."""
        with self._lock:
            job = self._replayable.pop(key, None)
            if job is None:
                return False
            job.final_sent = False
            job.deliveries = [delivery]
            self._jobs[key] = job
            self._dirty[key] = job
        self.wake()
        return True

    def start(self, job: Job) -> None:
        """Hold ``job`` and run it on the pool; unknown types and late dispatches fail here."""
        with self._lock:
            self._jobs[job.key] = job
        function = self.registry.get(job.dispatch.type)
        late = time.time() - job.dispatch.deadline
        if job.context.cancelled.is_set():
            self.finish(job, error="cancelled before it started")
        elif function is None:
            self.finish(
                job, error=f"worker {self.worker} does not run task type {job.dispatch.type}"
            )
        elif late >= 0:
            self.finish(job, error=f"deadline passed {late:.1f}s before the task could start")
        else:
            self._pool.submit(self._run, job, function)

    def _run(self, job: Job, function: TaskFunction) -> None:
        with self._lock:
            if self._jobs.get(job.key) is not job or job.final is not None:
                return  # withdrawn, cancelled or expired while waiting
            job.started_at = time.time()
            quiet = not self._dirty
            self._dirty[job.key] = job
            self._active.add(job)
        if quiet:  # the loop may be in a long wait: it must time this job's running report
            self.wake()
        log.debug("task started id=%s attempt=%d type=%s", *job.key, job.dispatch.type)
        try:
            self._call(job, function)
        finally:
            self._ended(job)

    def _call(self, job: Job, function: TaskFunction) -> None:
        try:
            output = function(dict(job.dispatch.payload), job.context)
            if not isinstance(output, dict):
                raise TypeError(f"task returned {type(output).__name__}, not a JSON object")
            _check_output(output)
            output = redact_json(output)  # a URL's password stays with the worker
        except TaskError as error:
            self.finish(job, error=str(error) or "task failed")
        except BaseException as error:  # a bug in the task (even sys.exit): report it, keep going
            log.exception("task crashed id=%s attempt=%d", *job.key)
            job.context.log.write(traceback.format_exc())
            self.finish(job, error=f"internal error in {job.dispatch.type}: {error!r}")
        else:
            self.finish(job, output=output)

    def _ended(self, job: Job) -> None:
        """The job's thread is free again; a withheld slot comes back."""
        with self._lock:
            self._active.discard(job)
            back = job in self._withheld
            self._withheld.discard(job)
            capacity = self.slots - len(self._withheld)
        if back:
            log.warning(
                "task thread ended at last id=%s attempt=%d; its slot is back (capacity %d of %d)",
                *job.key,
                capacity,
                self.slots,
            )
            self.wake()

    def capacity(self) -> int:
        """Slots the worker can offer: all but those held by tasks that would not stop."""
        with self._lock:
            return self.slots - len(self._withheld)

    def _watch(self, now: float) -> float | None:
        """Withhold the slots of tasks still running ``stop_grace`` after being cancelled;
        the seconds until the next such check falls due."""
        with self._lock:
            running = [job for job in self._active if job not in self._withheld]
        nearest: float | None = None
        for job in running:
            if not job.context.cancelled.is_set():
                continue
            if job.cancel_seen is None:
                job.cancel_seen = now
            left = job.cancel_seen + self.stop_grace - now
            if left > 0:
                nearest = left if nearest is None else min(nearest, left)
            else:
                self._withhold(job, now)
        return nearest

    def _withhold(self, job: Job, now: float) -> None:
        with self._lock:
            if job not in self._active:
                return  # it ended meanwhile
            self._withheld.add(job)
            capacity = self.slots - len(self._withheld)
        waited = now - (job.cancel_seen or now)
        log.warning(
            "task id=%s attempt=%d did not stop %.1fs after it was cancelled; abandoned, its "
            "slot withheld until its thread ends (capacity %d of %d)",
            *job.key,
            waited,
            capacity,
            self.slots,
        )
        self.finish(
            job,
            error=f"abandoned: the task did not stop within {self.stop_grace:g}s of being "
            f"cancelled; worker {self.worker} withholds its slot until it ends",
        )
        self.wake()

    # -- finishing (any thread) ----------------------------------------------------------

    def finish(
        self, job: Job, *, output: dict[str, Any] | None = None, error: str | None = None
    ) -> bool:
        """Set the job's final result unless it has one; True if this call set it."""
        now = time.time()
        logs = _logs(job.context.log, output if error is None else None)
        with self._lock:
            if job.final is not None:
                return False
            error = redact(error) if error is not None else None
            job.final = TaskResult(
                id=job.dispatch.id,
                attempt=job.dispatch.attempt,
                worker=self.worker,
                state="failed" if error is not None else "succeeded",
                started_at=job.started_at if job.started_at is not None else now,
                finished_at=now,
                output=output if error is None else None,
                error=error,
                received_at=job.received_at,
                logs=logs,
            )
            self._dirty[job.key] = job
        if self.observer is not None:
            started = job.started_at if job.started_at is not None else now
            self.observer(job.dispatch.type, "failed" if error else "succeeded", now - started)
        if error is None:  # the ledger and mm.events record every task; logs tell of failures
            log.debug("task finished id=%s attempt=%d state=succeeded", *job.key)
        else:
            log.info("task finished id=%s attempt=%d state=failed error=%r", *job.key, error)
        self.wake()
        return True

    def cancel(self, task_id: str) -> int:
        """Set ``cancelled`` on every held attempt of ``task_id``; how many there were."""
        with self._lock:
            jobs = [job for key, job in self._jobs.items() if key[0] == task_id]
        for job in jobs:
            job.context.cancelled.set()
            if job.state == "waiting":
                self.finish(job, error="cancelled before it started")
        return len(jobs)

    def expire(self, now: float | None = None) -> float | None:
        """Fail running jobs past their deadline and withhold the slots of those that do not
        stop; the seconds until the next deadline or check."""
        now = time.time() if now is None else now
        with self._lock:
            live = [job for job in self._jobs.values() if job.final is None]
        nearest = self._watch(now)
        for job in live:
            left = job.dispatch.deadline - now
            if left <= 0:
                job.context.cancelled.set()
                began = job.started_at or job.received_at
                self.finish(job, error=f"timed out after {now - began:.1f}s (deadline passed)")
            elif nearest is None or left < nearest:
                nearest = left
        return nearest

    def withdraw(self) -> list[Job]:
        """Take back the jobs no thread has started (to requeue them); they will not run."""
        with self._lock:
            waiting = [job for job in self._jobs.values() if job.state == "waiting"]
            for job in waiting:
                del self._jobs[job.key]
                self._dirty.pop(job.key, None)
                job.context.cancelled.set()
        return waiting

    def cancel_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.context.cancelled.set()

    def abandon(self, reason: str) -> None:
        """Give every unfinished job a failed result now (its thread may still be busy)."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if job.final is None]
        for job in jobs:
            job.context.cancelled.set()
            self.finish(job, error=reason)

    # -- reporting (connection thread) ---------------------------------------------------

    def reporting(self) -> bool:
        """Whether some job has a report to send (now, or once its hold is over)."""
        with self._lock:
            return bool(self._dirty)

    def take(self, hold: float = 0.0) -> tuple[list[Report], float | None]:
        """What to publish now, and in how many seconds a held running report falls due.

        A running report is held until its task has run ``hold`` seconds, so a
        short task that finishes meanwhile sends only its final result.
        """
        reports: list[Report] = []
        due: float | None = None
        now = time.time()
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            for job in dirty.values():
                if job.final is not None and not job.final_sent:
                    reports.append(Report(job, job.final))
                elif job.started_at is not None and not (job.running_sent or job.final_sent):
                    wait = job.started_at + hold - now
                    if wait > 0:
                        self._dirty[job.key] = job
                        due = wait if due is None else min(due, wait)
                    else:
                        reports.append(Report(job, self._running(job)))
        return reports, due

    def _running(self, job: Job) -> TaskResult:
        return TaskResult(
            id=job.dispatch.id,
            attempt=job.dispatch.attempt,
            worker=self.worker,
            state="running",
            started_at=job.started_at,
            received_at=job.received_at,
        )

    def sent(self, reports: list[Report]) -> list[Job]:
        """Record that ``reports`` are in the broker; the jobs now done (to acknowledge)."""
        done = []
        with self._lock:
            for report in reports:
                job = report.job
                if report.final:
                    job.final_sent = True
                    self._jobs.pop(job.key, None)
                    self._done[job.key] = None
                    self._replayable[job.key] = job
                    if len(self._done) > REMEMBER_DONE:
                        self._done.popitem(last=False)
                    if len(self._replayable) > REPLAYABLE:
                        self._replayable.popitem(last=False)
                    done.append(job)
                else:
                    job.running_sent = True
        return done

    def unsent(self, reports: list[Report]) -> None:
        """Publishing failed: report these again at the next flush."""
        with self._lock:
            for report in reports:
                self._dirty.setdefault(report.job.key, report.job)

    def held(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def busy(self) -> int:
        """Jobs not yet fully reported (running, waiting, or finished but unsent)."""
        with self._lock:
            return len(self._jobs)

    def shutdown(self) -> None:
        self._pool.shutdown()
