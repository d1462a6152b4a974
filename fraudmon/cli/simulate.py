"""`fraudmon simulate`: labelled card and payment traffic in files."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from fraudmon.core.errors import TrainingError
from fraudmon.core.eventfiles import NORMAL, write_events, write_ground_truth
from training.simulate import MIN_ACCOUNTS, SCENARIOS, SimulationConfig, simulate


def simulate_command(
    events: int = typer.Option(100_000, "--events", "-n", min=1, help="Number of events."),
    accounts: int = typer.Option(2_000, "--accounts", min=MIN_ACCOUNTS, help="Number of normal accounts."),
    days: float = typer.Option(30.0, "--days", min=0.0, help="Simulated span in days."),
    duration_seconds: float | None = typer.Option(
        None, "--duration-seconds", min=1.0, help="Simulated span in seconds (instead of --days)."),
    start: datetime | None = typer.Option(
        None, "--start", formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
        help="First moment of the span, UTC (default 2026-11-01)."),
    fraud_rate: float = typer.Option(0.005, "--fraud-rate", min=0.0, max=0.5, help="Share of events that are fraud."),
    seed: int = typer.Option(42, "--seed", help="Random seed; the same seed gives the same output."),
    out: Path = typer.Option(Path("events.jsonl"), "--out", "-o",
                             help="Events file: JSON lines, or CSV when the name ends in .csv."),
    truth: Path = typer.Option(Path("truth.csv"), "--truth", help="Ground-truth CSV (transaction_id,label,scenario)."),
) -> None:
    """Simulate labelled card and payment traffic: events in one file, the labels in another."""
    span = timedelta(seconds=duration_seconds) if duration_seconds else timedelta(days=days)
    config = SimulationConfig(
        n_events=events, n_accounts=accounts, duration=span, fraud_rate=fraud_rate, seed=seed,
        start=(start.replace(tzinfo=UTC) if start else SimulationConfig.start),
    )
    began = time.perf_counter()
    try:
        simulated, labels = simulate(config)
    except TrainingError as exc:
        raise typer.BadParameter(str(exc)) from None
    write_events(out, simulated)
    write_ground_truth(truth, labels)
    elapsed = time.perf_counter() - began
    per_scenario = Counter(t.scenario for t in labels)
    frauds = sum(t.label for t in labels)
    typer.echo(f"{len(simulated)} events from {simulated[0].event_time} to {simulated[-1].event_time} "
               f"in {elapsed:.1f} s -> {out}; labels -> {truth}")
    typer.echo(f"fraud: {frauds} events ({frauds / len(labels):.2%})")
    for name in (NORMAL, *SCENARIOS):
        typer.echo(f"  {name:<26} {per_scenario.get(name, 0)}")
