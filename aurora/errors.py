"""Errors of the Aurora client, each carrying one sentence a person can act on."""

from __future__ import annotations


class AuroraError(Exception):
    """Aurora answered a call with something other than OK, or could not be reached.

    ``code`` is Aurora's ResponseCode name (``INVALID_REQUEST``, ``ERROR``...)
    when the scheduler answered, None for transport failures.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class AuroraTransportError(AuroraError):
    """The HTTP exchange failed: unreachable, timed out, an HTTP error, too many redirects."""


class AuroraWaitTimeout(AuroraError):
    """A job did not reach a terminal state in time."""


class AuroraWaitCancelled(AuroraError):
    """Waiting for a job was cancelled by the caller."""
