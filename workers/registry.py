"""Task types by name: the ``@task`` decorator, ``--tasks`` modules and entry points.

A task type is a function registered under a name::

    from workers import task

    @task("wordcount")
    def wordcount(payload, context):
        ...
        return {"words": n}

The decorator registers the function in the process's registry (``TASKS``)
when its module is imported. A worker imports the built-in tasks
(``workers.tasks``), then each module named by ``--tasks`` (``load_module``),
then, for each capability still unknown, the entry point of that name in the
group ``matchmaker.tasks`` (``load_entry_points``): an installed package
contributes a task by declaring, in its ``pyproject.toml``::

    [project.entry-points."matchmaker.tasks"]
    wordcount = "gateway_tasks:wordcount"

Only the entry points a worker runs are imported (a worker runs no code it
was not asked for). A name is 1-64 letters, digits and ``_ . -``, starting
with a letter or digit: the shape a Serf tag and a wire message both carry.
Two different functions under one name is an error (``RegistryError``), at
registration, or for an entry point whose name is already taken or declared
by two distributions; registering the same function again changes nothing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from workers.context import TaskFunction

GROUP = "matchmaker.tasks"
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
F = TypeVar("F", bound=Callable[..., object])


class RegistryError(ValueError):
    """A task cannot be registered or loaded; the text says why in one sentence."""


def check_name(name: object) -> str:
    """``name`` if it is a valid task type name; RegistryError otherwise."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise RegistryError(
            f"task type name {shown} must be 1-64 letters, digits and _ . - "
            "(starting with a letter or digit)"
        )
    return name


def where(function: object) -> str:
    """``module:qualname`` of a function, as an entry point names it."""
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__name__
    return f"{module}:{name}"


class Registry(Mapping[str, TaskFunction]):
    """Task functions by type name, each with where it came from."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskFunction] = {}
        self._origins: dict[str, str] = {}

    def add(self, name: str, function: TaskFunction, origin: str | None = None) -> None:
        check_name(name)
        if not callable(function):
            raise RegistryError(f"task type {name!r}: {where(function)} is not a function")
        known = self._tasks.get(name)
        if known is function:
            return
        origin = origin or where(function)
        if known is not None:
            raise RegistryError(
                f"task type {name!r} is defined twice: by {self._origins[name]} and by {origin}"
            )
        self._tasks[name] = function
        self._origins[name] = origin

    def origin(self, name: str) -> str:
        return self._origins[name]

    def __getitem__(self, name: str) -> TaskFunction:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)


TASKS = Registry()


def task(name: str, *, registry: Registry | None = None) -> Callable[[F], F]:
    """Register the decorated function as task type ``name`` (see the module's text)."""
    check_name(name)
    into = TASKS if registry is None else registry

    def register(function: F) -> F:
        into.add(name, function)  # type: ignore[arg-type]
        return function

    return register


def load_module(module: str, registry: Registry | None = None) -> list[str]:
    """Import ``module`` (its ``@task`` functions register); the task types it defines.
    RegistryError with one sentence if it cannot be imported or defines none."""
    into = TASKS if registry is None else registry
    if not _MODULE.fullmatch(module):
        raise RegistryError(f"--tasks {module[:80]!r} is not a module name (e.g. mypackage.tasks)")
    try:
        importlib.import_module(module)
    except RegistryError as error:
        raise RegistryError(f"--tasks {module}: {error}") from None
    except ImportError as error:
        raise RegistryError(f"--tasks {module}: cannot import it: {error}") from None
    except Exception as error:  # its own code failed: told, not a traceback
        raise RegistryError(f"--tasks {module}: importing it failed: {error!r}") from None
    names = [n for n in into if _defined_in(into.origin(n), module)]
    if not names:
        raise RegistryError(
            f'--tasks {module}: defines no task (decorate a function with @task("name"))'
        )
    return sorted(names)


def _defined_in(origin: str, module: str) -> bool:
    owner = origin.partition(":")[0]
    return owner == module or owner.startswith(module + ".")


def declared() -> dict[str, list[importlib.metadata.EntryPoint]]:
    """The installed entry points of ``GROUP`` by name (metadata only: nothing imported)."""
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for point in importlib.metadata.entry_points(group=GROUP):
        found.setdefault(point.name, []).append(point)
    return found


def _same(origin: str, value: str) -> bool:
    """Whether an entry point's value names the function registered from ``origin``
    (``module:function``, or just the module that registers it)."""
    value = value.replace(" ", "")
    return origin == value or (":" not in value and origin.partition(":")[0] == value)


def _distribution(point: importlib.metadata.EntryPoint) -> str:
    dist = point.dist
    return f"entry point {point.value} of {dist.name if dist is not None else 'an unknown package'}"


def load_entry_points(names: Iterable[str], registry: Registry | None = None) -> list[str]:
    """Load the entry points named ``names`` that the registry does not hold yet; the
    task types loaded. RegistryError if a name is declared twice, is already taken by
    another function, or its entry point cannot be loaded."""
    into = TASKS if registry is None else registry
    points = declared()
    loaded = []
    for name in names:
        found = points.get(name, [])
        if len(found) > 1:
            which = " and ".join(_distribution(p) for p in found)
            raise RegistryError(f"task type {name!r} is declared twice: {which}")
        if not found:
            continue
        point = found[0]
        if name in into:
            if not _same(into.origin(name), point.value):  # another function holds the name
                raise RegistryError(
                    f"task type {name!r} is defined twice: by {into.origin(name)} and by "
                    f"{_distribution(point)}"
                )
            continue
        try:
            function = point.load()
        except RegistryError as error:
            raise RegistryError(f"{_distribution(point)}: {error}") from None
        except Exception as error:
            raise RegistryError(f"{_distribution(point)} cannot be loaded: {error!r}") from None
        if name not in into:  # not registered by a decorator as its module was imported
            into.add(name, function, point.value)
        elif into[name] is not function and callable(function):
            raise RegistryError(
                f"task type {name!r} is defined twice: by {into.origin(name)} and by "
                f"{_distribution(point)}"
            )
        loaded.append(name)
    return loaded


def unknown(names: Iterable[str], registry: Mapping[str, TaskFunction] | None = None) -> list[str]:
    """Those of ``names`` the registry does not hold."""
    into = TASKS if registry is None else registry
    return [n for n in names if n not in into]


def load_tasks(caps: Iterable[str], modules: Iterable[str]) -> None:
    """Make every task type of ``caps`` runnable: the built-ins, then ``modules``, then
    the entry points of the capabilities still unknown. RegistryError (a ValueError)
    with one sentence for a module or entry point that fails, or a capability that
    nothing defines."""
    import workers.tasks  # noqa: F401  (the built-ins register as they are imported)

    for module in modules:
        load_module(module)
    caps = list(caps)
    for name in caps:
        check_name(name)
    load_entry_points(caps)
    missing = unknown(caps)
    if missing:
        known = ", ".join(sorted(TASKS))
        raise RegistryError(
            f"unknown task type(s) in --caps: {', '.join(missing)} (known: {known}; a "
            f"package's tasks come from --tasks MODULE or a {GROUP!r} entry point)"
        )
