"""`fraudmon label`: post an analyst's verdict on a transaction to the verdicts topic."""

from __future__ import annotations

import getpass
import time
from pathlib import Path

import orjson
import typer
from kafka import KafkaProducer
from kafka.errors import KafkaError

from fraudmon.core.console import fail, settings_or_fail
from fraudmon.core.errors import InvalidEvent
from fraudmon.core.events import Verdict, parse_verdict, verdict_to_dict


def label_command(
    transaction_id: str = typer.Argument(..., help="The transaction the verdict is about."),
    fraud: bool = typer.Option(False, "--fraud", help="It was fraud."),
    legit: bool = typer.Option(False, "--legit", help="It was legitimate."),
    reviewer: str | None = typer.Option(None, "--reviewer", "-r", help="Who reviewed it (default: your login)."),
    note: str | None = typer.Option(None, "--note", "-n", help="A short note for the record."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (default config/monitor.yaml)."),
) -> None:
    """Post a verdict on a transaction: the worker counts it against its decision
    (`fraud_verdicts_total{decision, verdict}`), and `fraudmon train --verdicts` can learn from it.

    Example: fraudmon label tx-0042 --fraud --reviewer ana --note "card reported stolen"
    """
    if fraud == legit:
        fail("say --fraud or --legit (exactly one)")
    settings = settings_or_fail(config)
    verdict = Verdict(transaction_id, "fraud" if fraud else "legit", reviewer or getpass.getuser(),
                      int(time.time() * 1000), note)
    value = orjson.dumps(verdict_to_dict(verdict))
    try:
        parse_verdict(value)
    except InvalidEvent as exc:
        fail(str(exc))
    try:
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers.split(","), acks="all",
                                 max_block_ms=10_000, **settings.kafka.client_options())
        producer.send(settings.topics.verdicts, key=transaction_id.encode(), value=value).get(timeout=30)
        producer.close(timeout=5)
    except KafkaError as exc:
        fail(f"could not post the verdict to {settings.topics.verdicts} at {settings.kafka.bootstrap_servers} "
             f"({exc.__class__.__name__}): start the stack (`fraudmon stack up`) or check kafka.bootstrap_servers")
    typer.echo(f"verdict {verdict.label} on {transaction_id} posted to {settings.topics.verdicts}")
