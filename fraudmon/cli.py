"""The `fraudmon` command line. Heavy imports (TensorFlow, Faust) happen inside the commands that need them."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from fraudmon.config import Settings, load_settings
from fraudmon.errors import FraudMonitorError
from fraudmon.stack import LocalStack

app = typer.Typer(
    help="fraud-monitor: streaming card and payment fraud detection on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

stack_app = typer.Typer(help="Start, stop and inspect the local Kafka, Redis and Prometheus (no Docker).",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config (default config/monitor.yaml or $FRAUDMON_CONFIG).")


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except FraudMonitorError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@stack_app.command("install")
def stack_install(config: Path | None = ConfigOption) -> None:
    """Fetch the Kafka jars (Maven) once and check Java, Redis and Prometheus are installed."""
    try:
        LocalStack(_settings(config)).install()
    except FraudMonitorError as exc:
        _fail(str(exc))


@stack_app.command("up")
def stack_up(config: Path | None = ConfigOption) -> None:
    """Start Kafka (KRaft), Redis and Prometheus, wait until each answers, and create the topics."""
    settings = _settings(config)
    stack = LocalStack(settings)
    try:
        stack.up()
    except FraudMonitorError as exc:
        _fail(str(exc))
    _print_status(stack)
    typer.echo(f"topics: {', '.join(settings.topics.all())} ({settings.topics.partitions} partitions)")


@stack_app.command("down")
def stack_down(config: Path | None = ConfigOption) -> None:
    """Stop the services that `stack up` started (and nothing else)."""
    stopped = LocalStack(_settings(config)).down()
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(config: Path | None = ConfigOption) -> None:
    """Print each service, its address, and whether it answers."""
    stack = LocalStack(_settings(config))
    if not _print_status(stack):
        raise typer.Exit(1)


def _print_status(stack: LocalStack) -> bool:
    all_up = True
    for service in stack.status():
        state = "up" if service.running else "down"
        owner = f"pid {service.pid}" if service.pid else "not started by fraudmon"
        typer.echo(f"{service.name:<11} {state:<5} {service.address:<24} {owner}  log: {service.log}")
        all_up &= service.running
    return all_up


# commands: each line registers one command from the module that owns it.


def main() -> None:
    app()


if __name__ == "__main__":
    main()
