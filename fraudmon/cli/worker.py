"""`fraudmon worker`: the stream worker, as `faust -A stream_app.app worker` runs it."""

from __future__ import annotations

from pathlib import Path

import typer

from fraudmon.cli.common import ConfigOption, fail, settings_or_fail
from fraudmon.core.errors import FraudMonitorError

FAUST_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "crit"}
"""Faust's `-l` names for the settings' log levels."""


def worker_command(
    config: Path | None = ConfigOption,
    metrics_port: int | None = typer.Option(None, help="Port of /metrics (default from config)."),
    json_logs: bool = typer.Option(False, "--json-logs", help="One JSON object per log line."),
    log_level: str | None = typer.Option(
        None, help="debug, info, warning or error (default: logging.level, FRAUDMON_LOGGING__LEVEL)."),
    processes: int = typer.Option(1, "--processes", "-p", min=1, max=64,
                                  help="Worker processes in the consumer group (one per core; metrics on the port, "
                                       "port+1, ...). Each takes some of the input partitions."),
) -> None:
    """Run the stream worker (same as `faust -A stream_app.app worker`).

    Example: fraudmon worker --processes 2
    """
    import os
    import sys

    if config:
        os.environ["FRAUDMON_CONFIG"] = str(config)
    if metrics_port is not None:
        os.environ["FRAUDMON_METRICS_PORT"] = str(metrics_port)
    if json_logs:
        os.environ["FRAUDMON_LOG_JSON"] = "true"
    if log_level:
        os.environ["FRAUDMON_LOG_LEVEL"] = log_level.upper()
    settings = settings_or_fail(config)
    try:  # fail fast with a clear message before Faust starts
        from stream_app.runtime import build_engine, check_ports

        build_engine(settings)
        check_ports(settings)
    except FraudMonitorError as exc:
        fail(f"worker cannot start: {exc}")
    if processes > 1:
        from fraudmon.tools.harness import supervise_workers

        raise typer.Exit(supervise_workers(processes, settings.worker.metrics_port))
    from faust.cli.faust import cli as faust_cli

    web = ["--web-port", str(settings.worker.web_port)] if settings.worker.web_port else ["--without-web"]
    quiet = ["--quiet"] if settings.logging.json_logs else []  # no banner between the JSON lines
    sys.argv = ["faust", *quiet, "-A", "stream_app.app", "worker", "-l", FAUST_LEVELS[settings.logging.level.upper()],
                *web]
    faust_cli()


