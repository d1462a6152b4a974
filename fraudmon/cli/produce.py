"""`fraudmon produce`: send simulated or recorded events to Kafka at a steady rate."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from fraudmon.cli.common import (
    FORMAT_HELP,
    ConfigOption,
    FraudValueOption,
    LabelColumnOption,
    TimeColumnOption,
    event_format,
    table_or_fail,
)
from fraudmon.core.config import load_settings
from fraudmon.core.errors import FraudMonitorError, InputDataError
from fraudmon.core.eventfiles import (
    DEFAULT_BASE_TIME,
    DEFAULT_FILE_ACCOUNTS,
    GroundTruth,
    open_event_file,
    write_ground_truth,
)
from fraudmon.core.events import Event
from fraudmon.tools.produce import DEFAULT_DELIVERY_TIMEOUT_S, produce_events
from training.simulate import SimulationConfig, simulate


def produce_command(
    simulate_: bool = typer.Option(False, "--simulate", help="Send a freshly simulated, labelled stream."),
    file: Path | None = typer.Option(
        None, "--file", "-f", exists=True, dir_okay=False,
        help="Replay a file: events as JSON lines or CSV, the card-holder CSV Time,V1..V28,Amount,Class, or a "
             "feature table (--format table)."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    label_column: str | None = LabelColumnOption,
    fraud_value: str = FraudValueOption,
    time_column: str | None = TimeColumnOption,
    events: int | None = typer.Option(
        None, "--events", "-n", min=1,
        help="Simulator: number of events (default --count, or rate x duration, or 10000)."),
    accounts: int | None = typer.Option(
        None, "--accounts", min=30,
        help="Simulator: accounts (default events/2, at least 1000). Card-holder CSV and tables: accounts to "
             f"spread rows over (default {DEFAULT_FILE_ACCOUNTS})."),
    fraud_rate: float = typer.Option(0.005, "--fraud-rate", min=0.0, max=0.5, help="Simulator: share of fraud."),
    seed: int = typer.Option(42, "--seed", help="Simulator: random seed."),
    rate: float = typer.Option(1000.0, "--rate", "-r", min=0.0, help="Events per second; 0 = as fast as possible."),
    count: int | None = typer.Option(None, "--count", min=1, help="Stop after this many events."),
    duration: float | None = typer.Option(None, "--duration", min=0.1, help="Stop after this many seconds."),
    topic: str | None = typer.Option(None, "--topic", "-t", help="Topic (default: topics.transactions)."),
    bootstrap: str | None = typer.Option(None, "--bootstrap", help="Kafka host:port (default: kafka settings)."),
    truth: Path | None = typer.Option(
        None, "--truth",
        help="Write the labels of the events Kafka acknowledged here (transaction_id,label,scenario)."),
    live_time: bool = typer.Option(
        True, "--live-time/--file-time",
        help="Stamp each event with its send time (account creation moves with it), or keep the file's own "
             "time (the card-holder CSV is from 2013: end-to-end latencies would read as years)."),
    base_time: datetime = typer.Option(
        DEFAULT_BASE_TIME.replace(tzinfo=None), "--base-time", formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
        help="Card-holder CSV with --file-time: the UTC moment of Time = 0."),
    delivery_timeout: float = typer.Option(
        DEFAULT_DELIVERY_TIMEOUT_S, "--delivery-timeout", min=1.0,
        help="Seconds Kafka may take to acknowledge an event (e.g. through a broker restart) before it counts as "
             "undelivered; also the longest wait for the last acknowledgements."),
    malformed: int = typer.Option(0, "--malformed", min=0, help="Also send this many malformed messages."),
    compression: str = typer.Option("none", "--compression", help="none, gzip, snappy, lz4 or zstd."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    config: Path | None = ConfigOption,
) -> None:
    """Send transaction events to Kafka at a steady rate: simulated, or replayed from a file.

    Prints a summary in every case (sent, delivered, undelivered, first error); exits 1 when Kafka did not
    acknowledge everything, 2 when nothing could start (bad file, no broker, no topic)."""
    if simulate_ == (file is not None):
        raise typer.BadParameter("give exactly one source: --simulate or --file PATH")
    table = table_or_fail(fmt, label_column, fraud_value, time_column)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the stall warnings and the summary say what matters
    try:
        settings = load_settings(config)
        if bootstrap:
            settings = settings.model_copy(update={
                "kafka": settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})})
        labels: list[GroundTruth] | None
        if file is not None:
            source = open_event_file(file, fmt=event_format(fmt), base_time=base_time.replace(tzinfo=UTC),
                                     accounts=accounts or DEFAULT_FILE_ACCOUNTS, table=table)
            labels = source.ground_truth()
            if truth and labels is None:
                raise InputDataError(f"{file} carries no labels (only the card-holder CSV has Class, and a table its "
                                     "--label-column); the labels of simulated events are in the --truth file "
                                     "`fraudmon simulate` wrote")
            typer.echo(f"{file}: {source.rows} events ({source.kind}), validated")
            if source.table is not None and source.table.skipped:
                typer.echo(f"note: columns holding text are not sent as features: {', '.join(source.table.skipped)}")
            if source.kind in ("creditcard", "table"):
                prefix = "cc-acc" if source.kind == "creditcard" else "tbl-acc"
                typer.echo(f"note: the {'card-holder CSV' if source.kind == 'creditcard' else 'table'} has no "
                           f"account column, so its rows get made-up account ids ({prefix}-0..{source.accounts - 1}, "
                           "by a hash of the row): stateful rules (velocity, z-score, new counterparty, ...) judge "
                           "made-up accounts")
            stream: Iterable[Event] = source.events()
            total: int | None = source.rows
        else:
            n = events or count or (round(rate * duration) if rate and duration else 10_000)
            simulated, labels = simulate(SimulationConfig(
                n_events=n, n_accounts=accounts or max(1_000, n // 2), start=datetime.now(UTC),
                duration=timedelta(seconds=max(1.0, n / rate if rate else duration or 60.0)),
                fraud_rate=fraud_rate, seed=seed,
            ))
            stream, total = simulated, None
        summary = produce_events(
            settings, stream, topic=topic, rate=rate, count=count, duration=duration, live_time=live_time,
            malformed=malformed, progress=progress, total=total,
            compression=None if compression == "none" else compression, delivery_timeout_s=delivery_timeout,
        )
    except (FraudMonitorError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    for line in summary.lines():
        typer.echo(line)
    if truth and labels is not None:
        delivered = [t for t in labels if t.transaction_id in summary.delivered_ids]
        written = write_ground_truth(truth, delivered)
        typer.echo(f"truth        {written} labels of delivered events ({sum(t.label for t in delivered)} fraud) "
                   f"-> {truth}")
    if summary.undelivered:
        typer.secho(f"error: Kafka at {settings.kafka.bootstrap_servers} did not acknowledge {summary.undelivered} "
                    "messages (see `undelivered` above); check the broker, e.g. `fraudmon stack status`",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
