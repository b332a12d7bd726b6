"""membership: the live worker inventory from Serf gossip.

- ``rpc``: ``SerfRPC``, a client for the Serf agent's msgpack RPC protocol.
- ``agent``: ``SerfAgent``, start and stop a real ``serf agent`` process.
- ``tags``: the worker tag schema (``encode_worker_tags`` / ``decode_worker``).
- ``inventory``: ``Inventory``, live workers kept current from the event stream.
- ``table``: ``fetch_workers`` / ``format_workers`` for ``matchmaker workers``.
"""

from membership.agent import SerfAgent, free_port, generate_key
from membership.errors import (
    AgentError,
    MembershipError,
    SerfAuthError,
    SerfConnectionError,
    SerfError,
    TagError,
)
from membership.inventory import Change, Inventory, LiveWorker
from membership.rpc import Member, SerfRPC
from membership.table import WorkerRow, fetch_workers, format_workers
from membership.tags import WorkerInfo, decode_worker, encode_worker_tags

__all__ = [
    "AgentError",
    "Change",
    "Inventory",
    "LiveWorker",
    "Member",
    "MembershipError",
    "SerfAgent",
    "SerfAuthError",
    "SerfConnectionError",
    "SerfError",
    "SerfRPC",
    "TagError",
    "WorkerInfo",
    "WorkerRow",
    "decode_worker",
    "encode_worker_tags",
    "fetch_workers",
    "format_workers",
    "free_port",
    "generate_key",
]
