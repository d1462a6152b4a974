"""`fraudmon lists`: add, remove and show the entries of the live lists rules test."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import typer

from fraudmon.cli.common import ConfigOption, fail, settings_or_fail
from fraudmon.core.config import Settings
from fraudmon.core.events import format_timestamp
from fraudmon.tools.lists import add, oldest_first, read_entries, remove
from stream_app.lists import ListEntry, ListsError, ListsUnavailable, printable

lists_app = typer.Typer(
    help="Live lists (blocked_ips, trusted_accounts, ...) that rules test with `event.ip in lists.blocked_ips`. "
         "Every running worker sees a change within 2 s; every change is audited.",
    no_args_is_help=True, rich_markup_mode=None,
)
AuthorOption = typer.Option(None, "--author", "-a", help="Who makes the change (default: $USER).")


def _run[T](config: Path | None, action: Callable[[Settings], T]) -> T:
    """Run `action` with the settings; an invalid input exits 2, an unreachable Kafka 1, never a traceback."""
    settings = settings_or_fail(config)
    try:
        return action(settings)
    except ListsUnavailable as exc:
        fail(str(exc), code=1)
    except ListsError as exc:
        fail(str(exc))


def _when(epoch_ms: int | None) -> str:
    return "never" if epoch_ms is None else format_timestamp(epoch_ms)


@lists_app.command("add")
def add_command(
    name: str = typer.Argument(..., help="The list, e.g. blocked_ips."),
    value: str = typer.Argument(..., help="The value, matched exactly against the event field, e.g. 203.0.113.7."),
    ttl: str | None = typer.Option(None, "--ttl", help="Expire after this long: 30m, 24h, 7d, 2w, 1d12h "
                                                         "(default: never)."),
    reason: str = typer.Option("", "--reason", "-r", help="Why, for the audit trail and `lists show`."),
    author: str | None = AuthorOption,
    config: Path | None = ConfigOption,
) -> None:
    """Add a value to a list (or replace its entry, with a new TTL and reason).

    Example: fraudmon lists add blocked_ips 203.0.113.7 --ttl 24h --reason "card testing from this IP"
    """
    entry = _run(config, lambda settings: add(settings, name, value, ttl=ttl, reason=reason, author=author))
    typer.echo(f"added {printable(entry.value)} to {entry.list} (expires {_when(entry.expires_at_ms)}, "
               f"by {printable(entry.author)}); running workers see it within 2 s")


@lists_app.command("remove")
def remove_command(
    name: str = typer.Argument(..., help="The list, e.g. blocked_ips."),
    value: str = typer.Argument(..., help="The value to remove."),
    reason: str = typer.Option("", "--reason", "-r", help="Why, for the audit trail."),
    author: str | None = AuthorOption,
    config: Path | None = ConfigOption,
) -> None:
    """Remove a value from a list (a value that is not there: nothing changes, the attempt is audited).

    Example: fraudmon lists remove blocked_ips 203.0.113.7 --reason "customer's office NAT"
    """
    _run(config, lambda settings: remove(settings, name, value, reason=reason, author=author))
    typer.echo(f"removed {printable(value)} from {name}; running workers drop it within 2 s")


@lists_app.command("show")
def show_command(
    name: str | None = typer.Argument(None, help="The list (default: every list with its number of entries)."),
    expired: bool = typer.Option(False, "--expired", help="Also show expired entries (marked `expired`)."),
    as_json: bool = typer.Option(False, "--json", help="One entry a line as JSON, as on the lists topic."),
    config: Path | None = ConfigOption,
) -> None:
    """Show a list's entries: value, added, expires, author, reason (expired entries hidden unless --expired).

    Example: fraudmon lists show blocked_ips
    """
    now_ms = int(time.time() * 1000)
    if name is None:
        entries, malformed = _run(config, read_entries)
        counts: dict[str, list[int]] = {}
        for entry in entries.values():
            counts.setdefault(entry.list, [0, 0])[entry.expired(now_ms)] += 1
        for list_name, (live, gone) in sorted(counts.items()):
            typer.echo(f"{list_name:<32} {live:>9} entries" + (f" ({gone} expired)" if gone else ""))
        if not counts:
            typer.echo("no lists yet (`fraudmon lists add NAME VALUE` starts one)")
        _say_malformed(malformed)
        return
    entries, malformed = _run(config, lambda settings: read_entries(settings, name))
    shown = oldest_first(entries.values(), expired, now_ms)
    hidden = len(entries) - len(shown)
    _say_malformed(malformed)
    if as_json:
        for entry in shown:
            typer.echo(orjson.dumps(entry.to_dict()).decode())
        return
    typer.echo(f"{name}: {len(shown)} entries" + (f" ({hidden} expired, hidden; --expired shows them)"
                                                  if hidden else ""))
    rows = [_row(entry, now_ms) for entry in shown]
    if rows:
        widths = [max(len(row[column]) for row in [HEADER, *rows]) for column in range(len(HEADER) - 1)]
        for row in [HEADER, *rows]:
            typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                       + "  " + row[-1])


HEADER = ("VALUE", "ADDED", "EXPIRES", "AUTHOR", "REASON")


def _row(entry: ListEntry, now_ms: int) -> tuple[str, ...]:
    expires = _when(entry.expires_at_ms) + (" (expired)" if entry.expired(now_ms) else "")
    return (printable(entry.value), format_timestamp(entry.added_at_ms), expires, printable(entry.author),
            printable(entry.reason))


def _say_malformed(malformed: int) -> None:
    if malformed:
        typer.echo(f"({malformed} malformed records on the topic were skipped)", err=True)
