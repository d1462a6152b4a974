"""`fraudmon worker` hands Faust the log level of the settings (FRAUDMON_LOGGING__LEVEL, logging.level) unless
--log-level is given, which then wins over both."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from fraudmon.cli import app


@pytest.fixture
def faust_argv(monkeypatch) -> list[list[str]]:
    """The argv `fraudmon worker` starts Faust with; the engine and the ports are not checked here."""
    started: list[list[str]] = []
    monkeypatch.setattr("stream_app.runtime.build_engine", lambda settings: None)
    monkeypatch.setattr("stream_app.runtime.check_ports", lambda settings: None)
    monkeypatch.setattr("faust.cli.faust.cli", lambda: started.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for name in ("FRAUDMON_LOG_LEVEL", "FRAUDMON_LOGGING__LEVEL"):  # set first, so that what the command sets is undone
        monkeypatch.setenv(name, "INFO")
        monkeypatch.delenv(name)
    return started


def _level(argv: list[str]) -> str:
    return argv[argv.index("-l") + 1]


@pytest.mark.parametrize(("env", "args", "expected"), [
    ({}, [], "info"),
    ({"FRAUDMON_LOGGING__LEVEL": "WARNING"}, [], "warn"),
    ({"FRAUDMON_LOGGING__LEVEL": "critical"}, [], "crit"),
    ({"FRAUDMON_LOG_LEVEL": "error"}, [], "error"),
    ({"FRAUDMON_LOGGING__LEVEL": "WARNING"}, ["--log-level", "debug"], "debug"),
])
def test_the_log_level_comes_from_the_settings_unless_the_option_is_given(faust_argv, monkeypatch, env, args,
                                                                          expected) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["worker", *args])
    assert result.exit_code == 0, result.output
    assert [_level(argv) for argv in faust_argv] == [expected]


def test_an_invalid_log_level_stops_the_worker_in_one_line(faust_argv, monkeypatch) -> None:
    monkeypatch.setenv("FRAUDMON_LOGGING__LEVEL", "LOUD")
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "'LOUD' is not a log level" in result.output
    assert faust_argv == []


def test_every_log_level_is_one_faust_accepts() -> None:
    from faust.cli.base import LOGLEVELS

    from fraudmon.cli.worker import FAUST_LEVELS
    from fraudmon.core.config import LOG_LEVELS

    assert set(FAUST_LEVELS) == set(LOG_LEVELS)
    assert {level.upper() for level in FAUST_LEVELS.values()} <= set(LOGLEVELS)
