"""``TaskHandle``: one task as a client follows it.

A handle learns about its task from the notices the client's I/O thread hands it
(``apply``), in the order the scheduler sent them: the last one is the truth. A final
notice (``succeeded``, ``dead``, ``cancelled``, ``rejected``, ``unknown``) makes the
handle done for good; its done callbacks then run on the client's callback thread.

A handle that ``Client.retry`` follows carries a ``barrier``: the ``ref`` of the status
request the client sent right after the retry. Until the answer to it arrives, every
notice is older than the retry (a ``dead`` from before, say) and is ignored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from matchmaker.client.errors import ClientClosed, TaskError, TaskNotDone, error_of
from matchmaker.messages import FINAL_STATES, Notice

if TYPE_CHECKING:
    from matchmaker.client.core import Client

Callback = Callable[["TaskHandle"], object]


class TaskHandle:
    """A task submitted through (or followed by) a ``Client``."""

    def __init__(self, client: Client, task_id: str) -> None:
        self.id = task_id
        self._client = client
        self._cond = threading.Condition()
        self._last: Notice | None = None
        self._done = False
        self._closed = False
        self._barrier: str | None = None  # see the module docstring; set by ``rebase``
        self._answers: dict[str, Notice | None] = {}  # ref -> its answer, while awaited
        self._callbacks: list[Callback] = []
        self._on_close: list[Callable[[], object]] = []  # for waiters that are not threads
        self.heard = time.monotonic()  # when a notice last came (the client's resync clock)
        self.watched = False  # the client asked the scheduler about it once (``watch``)

    def __repr__(self) -> str:
        state = self._last.state if self._last else "submitted"
        return f"<TaskHandle {self.id} {state}>"

    # -- from the client's I/O thread -----------------------------------------------

    def apply(self, notice: Notice) -> list[Callback]:
        """Take a notice about this task; returns the callbacks to run if it made it done."""
        with self._cond:
            self.heard = time.monotonic()
            if notice.ref is not None and notice.ref in self._answers:
                self._answers[notice.ref] = notice
            if self._barrier is not None:
                if notice.ref != self._barrier:
                    self._cond.notify_all()
                    return []
                self._barrier = None
            if self._done:
                self._cond.notify_all()
                return []
            self._last = notice
            self._done = notice.state in FINAL_STATES
            self._cond.notify_all()
            if not self._done:
                return []
            callbacks, self._callbacks = self._callbacks, []
            return callbacks

    def rebase(self, barrier: str) -> None:
        """The task is retried: notices until the answer with ``barrier`` are older."""
        with self._cond:
            self._barrier = barrier
            self._done = False

    def close(self) -> None:
        """The client closed: waits end with ClientClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            hooks, self._on_close = self._on_close, []
        for hook in hooks:
            hook()

    def on_close(self, hook: Callable[[], object]) -> None:
        """Call ``hook()`` when the client closes (at once if it has)."""
        with self._cond:
            closed = self._closed
            if not closed:
                self._on_close.append(hook)
        if closed:
            hook()

    # -- the public side ---------------------------------------------------------------

    def done(self) -> bool:
        """Whether the task has finished (succeeded, dead, cancelled, rejected, unknown)."""
        with self._cond:
            return self._done

    def state(self, timeout: float = 30.0) -> str:
        """The task's state now, as the scheduler answers a status request (``pending``,
        ``assigned``, ``running``, ``succeeded``, ``dead``, ``cancelled``, or ``unknown``
        for no task of this client's user), or the final state once done without asking.
        TimeoutError if no answer comes within ``timeout`` seconds."""
        with self._cond:
            if self._done and self._last is not None:
                return self._last.state
        ref = self._client.ask([self.id], answer_to=self)
        deadline = time.monotonic() + timeout
        with self._cond:
            try:
                while (answer := self._answers.get(ref)) is None:
                    self._check_open()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"no answer from the scheduler about task {self.id} in {timeout:g}s"
                        )
                    self._cond.wait(left)
            finally:
                self._answers.pop(ref, None)
            return answer.state

    def expect(self, ref: str) -> None:
        """An answer with ``ref`` is awaited (``Client.ask``)."""
        with self._cond:
            self._answers[ref] = None

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The task's output once it has succeeded; its ``TaskError`` (``TaskDead``,
        ``TaskCancelled``, ``TaskRejected``, ``TaskUnknown``) if it ended otherwise;
        TimeoutError if it has not finished within ``timeout`` seconds (None: no limit)."""
        if not self.done():
            self._client.watch(self)  # what it is now: it may have ended before we came
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._done:
                self._check_open()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    state = self._last.state if self._last else "submitted"
                    raise TimeoutError(f"task {self.id} is not done after {timeout:g}s ({state})")
                self._cond.wait(left)
        return self.result()

    def result(self) -> dict[str, Any]:
        """Without waiting: the output of a succeeded task, the ``TaskError`` of one that
        ended otherwise, ``TaskNotDone`` if it has not finished."""
        with self._cond:
            last = self._last
            if not self._done or last is None:
                raise TaskNotDone(f"task {self.id} has not finished")
        if last.state == "succeeded":
            return dict(last.output or {})
        raise error_of(last)

    def exception(self) -> TaskError | None:
        """The ``TaskError`` a finished task ends with (None if it succeeded);
        ``TaskNotDone`` if it has not finished."""
        try:
            self.result()
        except TaskError as error:
            return error
        return None

    def cancel(self) -> None:
        """Ask the scheduler to cancel the task (the broker has the request on return);
        the handle is done once the scheduler has cancelled it (``cancelled``), or with
        the state the task ended in if it finished first."""
        self._client.cancel(self.id)

    def add_done_callback(self, fn: Callback) -> None:
        """Call ``fn(handle)`` once the task is done, on the client's callback thread
        (at once, on this thread, if it is done already). ``fn`` may call the client
        (submit the next task of a chain); what it raises is logged."""
        with self._cond:
            done = self._done
            if not done:
                self._callbacks.append(fn)
        if done:
            self._client.run_callbacks(self, [fn], here=True)
        else:
            self._client.watch(self)

    def check_open(self) -> None:
        """ClientClosed if the client was closed."""
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"the client was closed while waiting on task {self.id}")
