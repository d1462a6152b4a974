"""What every command shares: the --config option, and how a command ends on a user's mistake (one red `error:`
line and exit code 2, never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from fraudmon.core.config import Settings, load_settings
from fraudmon.core.errors import FraudMonitorError
from fraudmon.core.eventfiles import DATA_FORMATS, TableSpec, table_spec

ConfigOption = typer.Option(
    None, "--config", "-c", help="YAML config (default config/monitor.yaml or $FRAUDMON_CONFIG)."
)
FORMAT_HELP = (f"{', '.join(DATA_FORMATS)} (auto tells events from the card-holder CSV by the file's name and "
               "header; table: any CSV of numeric features, with --label-column).")
# The feature-table options, shared by train, evaluate, produce and replay.
LabelColumnOption = typer.Option(None, "--label-column", help="--format table: the column that marks frauds.")
FraudValueOption = typer.Option("1", "--fraud-value", help="--format table: the label value of a fraud (default 1).")
TimeColumnOption = typer.Option(None, "--time-column", help="--format table: a time column (seconds) to split by "
                                "(default: a seeded random split).")


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def settings_or_fail(config: Path | None) -> Settings:
    """The settings from `config` (or the default file and the environment), or a clean exit saying what is wrong."""
    try:
        return load_settings(config)
    except FraudMonitorError as exc:
        fail(str(exc))


def table_or_fail(fmt: str, label_column: str | None, fraud_value: str, time_column: str | None) -> TableSpec | None:
    """The feature-table reading asked for on the command line (`table_spec`), or a clean exit saying why not."""
    try:
        return table_spec(fmt, label_column, fraud_value, time_column)
    except FraudMonitorError as exc:
        fail(str(exc))


def event_format(fmt: str) -> str:
    """The `--format` for event files: `table` is read by the table options instead."""
    return "auto" if fmt == "table" else fmt
