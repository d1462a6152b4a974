"""`fraudmon <command> --help` for every command: it renders, and boolean options are flags that take no value."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from fraudmon.cli import app


def _commands(command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
    for name, subcommand in (subcommands or {}).items():
        yield from _commands(subcommand, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))
COMMAND_IDS = [" ".join(path) for path in COMMANDS]


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_covered() -> None:
    assert set(COMMAND_IDS) >= {"train", "evaluate", "simulate", "produce", "replay", "worker", "demo", "bench",
                                "tail", "topics", "chaos", "stack up", "stack down", "stack status"}


@pytest.mark.parametrize("path", COMMANDS, ids=COMMAND_IDS)
def test_help_renders(path: tuple[str, ...]) -> None:
    assert "Usage:" in _help(path)


@pytest.mark.parametrize("path", COMMANDS, ids=COMMAND_IDS)
def test_boolean_options_are_flags(path: tuple[str, ...]) -> None:
    """A bool option is `--x` or `--x/--no-x`: `fraudmon topics --json true` is a usage error, never a value."""
    options = [p for p in COMMANDS[path].params if p.type_descriptor.annotation is bool]
    assert all(option.is_flag for option in options), [option.opts for option in options if not option.is_flag]


def test_a_value_after_a_flag_is_refused() -> None:
    result = CliRunner().invoke(app, ["train", "--quiet", "true"])
    assert result.exit_code == 2 and "unexpected extra argument" in result.output


@pytest.mark.parametrize("path", COMMANDS, ids=COMMAND_IDS)
def test_help_shows_boolean_options_as_flags(path: tuple[str, ...]) -> None:
    text = _help(path)
    assert "<bool>" not in text and "BOOLEAN" not in text
