"""What ``matchmaker.client`` raises: one class per way a call or a task can end badly."""

from __future__ import annotations

from matchmaker.messages import Notice


class ClientError(RuntimeError):
    """The client cannot do what was asked (the broker refused, did not answer, or the
    client is closed); the text says which."""


class ClientClosed(ClientError):
    """The client was closed while the call waited."""


class TaskNotDone(ClientError):
    """``result()`` of a task that has not finished."""


class TaskError(ClientError):
    """The task ended without a result. ``task_id``, ``state``, ``error`` (the task's last
    error, or the scheduler's reason), ``attempt`` and ``worker`` say how."""

    def __init__(self, notice: Notice) -> None:
        self.task_id = notice.id
        self.state = notice.state
        self.error = notice.error
        self.attempt = notice.attempt
        self.worker = notice.worker
        why = f": {notice.error}" if notice.error else ""
        super().__init__(f"task {notice.id} {notice.state}{why}")


class TaskFailed(TaskError):
    """The task failed for good: it will not run again unless retried."""


class TaskDead(TaskFailed):
    """Every attempt failed (``max_attempts``); ``error`` is the last attempt's."""


class TaskRejected(TaskFailed):
    """The scheduler refused the submit (a quota, a priority above the sender's cap, an id
    another owner holds, ...); ``error`` is its reason."""


class TaskCancelled(TaskError):
    """The task was cancelled."""


class TaskUnknown(TaskError):
    """The scheduler knows no task of this client's user with this id."""


ERRORS: dict[str, type[TaskError]] = {
    "dead": TaskDead,
    "rejected": TaskRejected,
    "cancelled": TaskCancelled,
    "unknown": TaskUnknown,
}


def error_of(notice: Notice) -> TaskError:
    return ERRORS.get(notice.state, TaskFailed)(notice)
