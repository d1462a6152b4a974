"""`fraudmon demo`: the bounded end-to-end demo on the local stack."""

from __future__ import annotations

from pathlib import Path

import typer

from fraudmon.cli.common import ConfigOption, fail, settings_or_fail
from fraudmon.core.errors import FraudMonitorError


def demo_command(
    duration: float = typer.Option(20.0, help="Seconds of simulated live traffic."),
    rate: float = typer.Option(1000.0, help="Events per second."),
    malformed: int = typer.Option(25, help="Malformed events mixed in (they must reach the dead-letter topic)."),
    seed: int = typer.Option(7, help="Simulator seed."),
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave Kafka, Redis and Prometheus up."),
    out_dir: Path = typer.Option(Path("demo-output"), help="Where the summary, ground truth and logs go."),
    config: Path | None = ConfigOption,
) -> None:
    """Bounded end-to-end demo on the local stack: stack up, worker, labelled stream, summary."""
    from fraudmon.tools.demo import run_demo

    settings = settings_or_fail(config)
    try:
        summary = run_demo(settings, duration_s=duration, rate=rate, malformed=malformed, seed=seed,
                           keep_running=keep_running, out_dir=out_dir)
    except FraudMonitorError as exc:
        fail(str(exc))
    if not summary["complete"]:
        fail("not every event reached a decision or the dead-letter topic in time", code=1)


