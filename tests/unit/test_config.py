"""Configuration precedence: defaults < TOML file < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from matchmaker.config import Config, ConfigError, load


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "mm.toml"
    file.write_text('round_interval = 0.5\nstrategy = "binpack"\nmetrics_port = 9100\n')
    monkeypatch.setenv("MM_ROUND_INTERVAL", "0.25")
    monkeypatch.setenv("MM_TASK_TYPES", "sleep, data_staging")
    config = load(file, {"metrics_port": 9200, "strategy": None})
    assert config.round_interval == 0.25  # environment over file
    assert config.strategy == "binpack"  # file over default; a None flag is ignored
    assert config.metrics_port == 9200  # flag over file
    assert config.task_types == ("sleep", "data_staging")
    assert config.ledger_path == Path("state") / "ledger.sqlite"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("strategy = 'fastest'", "strategy must be one of"),
        ("colour = 'blue'", "unknown keys"),
        ("round_interval = [", "not valid TOML"),
        ("round_interval = 'soon'", "round_interval"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, fragment: str) -> None:
    file = tmp_path / "mm.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load(file)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(tmp_path / "absent.toml")


def test_the_configuration_reference_is_current() -> None:
    from pathlib import Path

    from matchmaker import configdoc

    assert configdoc.missing() == [], "describe these fields in matchmaker/configdoc.py"
    reference = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert configdoc.is_current(reference), "run: python -m matchmaker.configdoc > " + str(
        reference
    )


def test_the_batch_window_reaches_the_loop_and_is_checked(tmp_path: Path) -> None:
    from matchmaker.scheduler.memory import MemoryBroker
    from matchmaker.service import Scheduler

    config = Config(state_dir=tmp_path, batch_window=1.5, authenticated_senders=False)
    scheduler = Scheduler(config, connector=MemoryBroker())
    try:
        assert scheduler.turns.turns.batch == scheduler.turns.rounds.batch == 1.5
    finally:
        scheduler.ledger.close()
    for bad in (-1.0, 101.0, float("nan")):
        with pytest.raises(ConfigError, match="batch_window must be from 0 to 100"):
            Config(state_dir=tmp_path, batch_window=bad).check()
