"""What every command shares: the --config option, and how a command ends on a user's mistake (one red `error:`
line and exit code 2, never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from fraudmon.core.config import Settings, load_settings
from fraudmon.core.errors import FraudMonitorError

ConfigOption = typer.Option(
    None, "--config", "-c", help="YAML config (default config/monitor.yaml or $FRAUDMON_CONFIG)."
)


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def settings_or_fail(config: Path | None) -> Settings:
    """The settings from `config` (or the default file and the environment), or a clean exit saying what is wrong."""
    try:
        return load_settings(config)
    except FraudMonitorError as exc:
        fail(str(exc))
