"""Apache Aurora's scheduler API: IDL subset, generated code, client, local server.

``aurora/api.thrift`` is matchmaker's own IDL for the part of Aurora 0.22's
API it uses; ``aurora/gen/`` is generated from it by ``scripts/gen_aurora.sh``.

Thrift's Python generator gives structs ``__eq__`` but no ``__hash__`` (so
they are unhashable), yet Aurora's API has ``set<struct>`` fields
(``set<Resource>``, ``set<JobKey>``, ``set<JobConfiguration>``...), which the
generated readers decode into Python sets. The generator's alternative,
``python.immutable`` structs, cannot hold the nested sets and maps those
structs contain. So importing this package gives every generated struct a
value hash consistent with its ``__eq__``: a hash of the struct's class and
its fields, containers frozen recursively. As with any value hash on a
mutable object, do not change a struct while it sits in a set.
"""

from __future__ import annotations

from typing import Any

from aurora.gen.api import ttypes


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(_frozen(v) for v in value)
    if isinstance(value, dict):
        return frozenset((_frozen(k), _frozen(v)) for k, v in value.items())
    return value


def _struct_hash(self: Any) -> int:
    return hash((type(self).__name__, _frozen(tuple(sorted(vars(self).items())))))


def _make_hashable() -> None:
    for value in vars(ttypes).values():
        if isinstance(value, type) and hasattr(value, "thrift_spec"):
            setattr(value, "__hash__", _struct_hash)  # noqa: B010


_make_hashable()
