"""`fraudmon tail` and `fraudmon topics`: what the worker wrote, and where each consumer group is."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer

from fraudmon.cli.common import ConfigOption, fail, settings_or_fail
from fraudmon.core.errors import FraudMonitorError
from fraudmon.tools.watch import format_report, resolve_topic, tail, topic_report


def _quiet_broken_pipe() -> NoReturn:
    """`fraudmon tail --json | head -3`: the reader left; end without a traceback (and without one at exit)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(0)


def tail_command(
    topic: str = typer.Argument("flagged", help="flagged, scores, dlq, verdicts, or any topic name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep waiting for new records (Ctrl-C ends)."),
    from_beginning: bool = typer.Option(
        False, "--from-beginning", help="Start at the oldest record instead of showing the last --last ones."),
    last: int = typer.Option(
        20, "--last", "-n", min=0, help="How many of the records already there to show first (0: only new ones)."),
    account: str | None = typer.Option(None, "--account", help="Only records of this account (key or account_id)."),
    as_json: bool = typer.Option(False, "--json", help="Print each value as one line of JSON (for jq)."),
    max_records: int | None = typer.Option(None, "--max", min=1, help="Stop after printing this many records."),
    config: Path | None = ConfigOption,
) -> None:
    """Print a topic's records, one readable line each: decisions, dead letters, verdicts, or key and value.

    Shows the last --last records, or all from the oldest with --from-beginning;
    without --follow it stops at the end of the topic as it was at start.
    Short names: flagged, scores, dlq (the configured topics), verdicts (transaction-verdicts).
    Nothing is committed: tail never disturbs the worker's consumer group.

    Examples:
      fraudmon tail                               the last 20 flags
      fraudmon tail scores -f --account acc-17    one account's decisions, live
      fraudmon tail dlq --from-beginning --max 5  the first five dead letters
      fraudmon tail --json -n 100 | jq .reasons   the last 100 flags' reasons
    """
    settings = settings_or_fail(config)
    name = resolve_topic(settings, topic)
    try:
        printed = tail(settings, name, follow=follow, from_beginning=from_beginning, last=last, account=account,
                       as_json=as_json, max_records=max_records)
    except FraudMonitorError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:
        _quiet_broken_pipe()
    if not printed and not follow:
        typer.echo(f"no records on {name}" + (f" for {account}" if account else ""), err=True)


def topics_command(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    config: Path | None = ConfigOption,
) -> None:
    """List the topics with their partitions and messages, and each consumer group's lag per topic.

    Messages: the sum of the partitions' end offsets (everything ever written).
    Lag: end offset minus committed offset, summed over the partitions the group has committed.
    Internal topics (__*) are left out.

    Examples:
      fraudmon topics
      fraudmon topics --json | jq '.groups[].lag'
    """
    settings = settings_or_fail(config)
    try:
        report = topic_report(settings)
    except FraudMonitorError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo("\n".join(format_report(report)))
