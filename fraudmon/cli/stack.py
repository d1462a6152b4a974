"""`fraudmon stack`: the local Kafka, Redis and Prometheus."""

from __future__ import annotations

from pathlib import Path

import typer

from fraudmon.cli.common import ConfigOption, fail, settings_or_fail
from fraudmon.core.errors import FraudMonitorError
from fraudmon.tools.stack import LocalStack

stack_app = typer.Typer(help="Start, stop and inspect the local Kafka, Redis and Prometheus (no Docker).",
                        no_args_is_help=True, rich_markup_mode=None)


@stack_app.command("install")
def stack_install(config: Path | None = ConfigOption) -> None:
    """Fetch the Kafka jars (Maven) once and check Java, Redis and Prometheus are installed."""
    try:
        LocalStack(settings_or_fail(config)).install()
    except FraudMonitorError as exc:
        fail(str(exc))


@stack_app.command("up")
def stack_up(config: Path | None = ConfigOption) -> None:
    """Start Kafka (KRaft), Redis and Prometheus, wait until each answers, and create the topics."""
    settings = settings_or_fail(config)
    stack = LocalStack(settings)
    try:
        stack.up()
    except FraudMonitorError as exc:
        fail(str(exc))
    _print_status(stack)
    typer.echo(f"topics: {', '.join(settings.topics.all())} ({settings.topics.partitions} partitions)")


@stack_app.command("down")
def stack_down(config: Path | None = ConfigOption) -> None:
    """Stop the services that `stack up` started (and nothing else)."""
    stopped = LocalStack(settings_or_fail(config)).down()
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(config: Path | None = ConfigOption) -> None:
    """Print each service: up, starting, down, crashed or foreign (another program on its port). Exit 1 unless
    every port answers."""
    stack = LocalStack(settings_or_fail(config))
    if not _print_status(stack):
        raise typer.Exit(1)


def _print_status(stack: LocalStack) -> bool:
    """One line per service saying its state and what to do about it; True when every service's port answers."""
    for service in (statuses := stack.status()):
        detail = {
            "up": f"pid {service.pid}, log {service.log}",
            "starting": f"pid {service.pid}, not accepting connections yet; log {service.log}",
            "down": "not running (`fraudmon stack up` starts it)",
            "crashed": f"pid {service.pid} is gone (stopped without `fraudmon stack down`); its log: {service.log}"
                       + ("; another program now listens on its port" if service.running
                          else "; `fraudmon stack up` restarts it"),
            "foreign": "another program listens on this port (not started by fraudmon; `stack up` will use it "
                       "and `stack down` leaves it alone)",
        }[service.state]
        typer.echo(f"{service.name:<11} {service.state:<8} {service.address:<24} {detail}")
    return all(service.running for service in statuses)


