"""The contract with pika: every private name ``pika_shim`` uses exists on the installed pika,
on live objects of a real connection, and pika is imported only under ``matchmaker/wire``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.channel import Channel
from pika.connection import Connection

from matchmaker.wire import broker, pika_shim

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "matchmaker" / "wire" / "pika_shim.py"


@pytest.fixture
def live(broker_url: str) -> Iterator[dict[type, object]]:
    """A real connection and channel, and the asynchronous objects under them."""
    connection = broker.connect(broker_url)
    channel = connection.channel()
    try:
        yield {
            BlockingConnection: connection,
            BlockingChannel: channel,
            Connection: pika_shim.connection_of(connection),
            Channel: pika_shim.channel_of(channel),
        }
    finally:
        connection.close()


def test_every_private_name_the_shim_uses_exists(live: dict[type, object]) -> None:
    missing = [
        f"{kind.__module__}.{kind.__name__}.{name}"
        for kind, used in pika_shim.PRIVATE.items()
        for name in used
        if not hasattr(live[kind], name)
    ]
    assert missing == [], f"pika {pika.__version__} lacks {missing}: update pika_shim"


def test_private_lists_every_private_name_in_the_shim() -> None:
    """A private attribute read in the shim's code but not listed in ``PRIVATE`` would escape
    the contract test above."""
    listed = {name for used in pika_shim.PRIVATE.values() for name in used}
    read = {
        node.attr
        for node in ast.walk(ast.parse(SHIM.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }
    read |= {
        node.value
        for node in ast.walk(ast.parse(SHIM.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("_")
        and node.value.isidentifier()
        and not node.value.startswith("__")
    }
    assert read <= listed, f"not in PRIVATE: {sorted(read - listed)}"


def test_the_installed_pika_is_the_tested_one() -> None:
    assert pika_shim.check() is None


def test_an_untested_pika_is_refused_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, broker_url: str
) -> None:
    monkeypatch.setattr(pika, "__version__", "2.0.0")
    why = pika_shim.check()
    assert why is not None and "pika 2.0.0 is installed" in why and "pika>=" in why
    with pytest.raises(broker.BrokerError, match="pip install 'pika>="):
        broker.connect(broker_url)


def test_the_pin_in_pyproject_is_the_tested_range() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"{pika_shim.REQUIREMENT}"' in text


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


ALLOWED = {"test_pika_shim.py", "test_wire_codec.py"}  # tests of the shim and the codec


def test_pika_is_imported_only_under_matchmaker_wire() -> None:
    wire = ROOT / "matchmaker" / "wire"
    offenders = [
        str(path.relative_to(ROOT))
        for top in ("matchmaker", "membership", "workers", "aurora", "benchmarks", "scripts")
        for path in (ROOT / top).rglob("*.py")
        if wire not in path.parents and "pika" in _imports(path)
    ]
    offenders += [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if path.name not in ALLOWED and "pika" in _imports(path)
    ]
    assert offenders == []
