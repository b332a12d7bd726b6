"""The errors membership/ raises: each carries one sentence a person can act on."""

from __future__ import annotations


class MembershipError(Exception):
    """Base class: anything membership/ reports to a caller or a CLI user."""


class SerfError(MembershipError):
    """The Serf agent answered a request with an error (its message is kept verbatim)."""

    def __init__(self, message: str, command: str = "") -> None:
        super().__init__(message)
        self.command = command


class SerfAuthError(SerfError):
    """The agent wants an RPC auth key, or refused the one given."""


class SerfConnectionError(SerfError):
    """The agent could not be reached, or the connection to it was lost."""


class AgentError(MembershipError):
    """A `serf agent` process failed to start or to stop."""


class TagError(MembershipError, ValueError):
    """A worker's tags are malformed, unsafe or too large (the message says which and why)."""


class KeyFileError(MembershipError):
    """A Serf key is missing, malformed, or stored where others can read it."""
