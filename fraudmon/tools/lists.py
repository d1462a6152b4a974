"""`fraudmon lists add|remove|show`: edit the live lists that rules test with `event.ip in lists.blocked_ips`.

A change is one record on the compacted lists topic (every running worker follows it and sees the change within
2 s), written after its record on the audit topic (who, when, what, why). `show` reads the lists topic from its
start, as a worker does. The format and the checks live in `stream_app.lists`.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
import typer
from kafka import KafkaProducer
from kafka.errors import KafkaError

from fraudmon.core.config import Settings
from fraudmon.core.console import fail, settings_or_fail
from fraudmon.core.events import format_timestamp
from stream_app.lists import (
    CONNECT_TIMEOUT_MS,
    ListEntry,
    ListsError,
    ListsUnavailable,
    audit_record,
    check_author,
    check_list_name,
    check_reason,
    check_value,
    ensure_lists_topics,
    entry_key,
    open_from_start,
    parse_record,
    parse_ttl_ms,
    printable,
    reached,
)

READ_TIMEOUT_S = 60.0  # `show` gives up reading the lists topic after this long


def default_author() -> str:
    """Who makes a change when `--author` is not given: $USER, else the login name."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        raise ListsError("cannot tell who you are: say --author NAME") from None


def _send(settings: Settings, records: list[tuple[str, bytes, bytes | None]]) -> None:
    """Create the lists topics if missing, then write `(topic, key, value)` records one after the other, each
    acknowledged by every in-sync replica before the next is sent; raises ListsUnavailable."""
    kafka = settings.kafka
    ensure_lists_topics(kafka.bootstrap_servers, settings.topics, kafka.client_options())
    try:
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers.split(","), acks="all",
                                 max_block_ms=10_000, bootstrap_timeout_ms=CONNECT_TIMEOUT_MS, **kafka.client_options())
    except KafkaError as exc:
        raise ListsUnavailable(f"no Kafka broker answers at {kafka.bootstrap_servers} ({exc.__class__.__name__}): "
                               "start the stack (`fraudmon stack up`) or check kafka.bootstrap_servers") from exc
    try:
        for topic, key, value in records:
            producer.send(topic, key=key, value=value).get(timeout=30)
    except KafkaError as exc:
        raise ListsUnavailable(f"could not write to {topic} at {kafka.bootstrap_servers} "
                               f"({exc.__class__.__name__}: {exc})") from exc
    finally:
        producer.close(timeout=5)


def add(settings: Settings, list_name: str, value: str, *, ttl: str | int | None = None, reason: str = "",
        author: str | None = None, now_ms: int | None = None) -> ListEntry:
    """Add `value` to `list_name` (or replace its entry), expiring after `ttl` (`24h`, or milliseconds; None:
    never). Raises ListsError for an invalid input, ListsUnavailable when Kafka does not take it."""
    ttl_ms = parse_ttl_ms(ttl) if isinstance(ttl, str) else ttl
    if ttl_ms is not None and ttl_ms <= 0:
        raise ListsError("TTL must be above 0")
    entry = ListEntry.new(list_name, value, reason=reason, author=author or default_author(), ttl_ms=ttl_ms,
                          now_ms=now_ms)
    audit = audit_record("add", entry.list, entry.value, author=entry.author, reason=entry.reason,
                         at_ms=entry.added_at_ms, expires_at_ms=entry.expires_at_ms)
    _send(settings, [(settings.topics.lists_audit, entry.key, audit), (settings.topics.lists, entry.key,
                                                                         entry.to_json())])
    return entry


def remove(settings: Settings, list_name: str, value: str, *, reason: str = "", author: str | None = None) -> None:
    """Remove `value` from `list_name` (a tombstone; nothing happens to a value that is not there, but the
    attempt is audited). Raises ListsError or ListsUnavailable."""
    check_list_name(list_name)
    check_value(value)
    check_reason(reason)
    author = check_author(author or default_author())
    key = entry_key(list_name, value)
    audit = audit_record("remove", list_name, value, author=author, reason=reason)
    _send(settings, [(settings.topics.lists_audit, key, audit), (settings.topics.lists, key, None)])


def read_entries(settings: Settings, list_name: str | None = None, topic: str | None = None,
                 timeout_s: float = READ_TIMEOUT_S) -> tuple[dict[tuple[str, str], ListEntry], int]:
    """The current entries (of one list, or all) read from the lists topic's start to its end, expired ones
    included, and the number of malformed records skipped. Raises ListsUnavailable."""
    from kafka.errors import KafkaError

    topic = topic or settings.topics.lists
    prefix = None if list_name is None else entry_key(check_list_name(list_name), "")
    consumer, ends = open_from_start(settings, topic, "fraudmon-lists-show")
    entries: dict[tuple[str, str], ListEntry] = {}
    malformed = 0
    deadline = time.monotonic() + timeout_s
    try:
        while not reached(consumer, ends):
            if time.monotonic() > deadline:
                raise ListsUnavailable(f"reading {topic} took over {timeout_s:g}s; is the broker overloaded?")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if prefix is not None and not (record.key or b"").startswith(prefix):
                        continue
                    try:
                        name, value, entry = parse_record(record.key, record.value)
                    except ListsError:
                        malformed += 1
                        continue
                    if entry is None:
                        entries.pop((name, value), None)
                    else:
                        entries[(name, value)] = entry
    except KafkaError as exc:
        raise ListsUnavailable(f"could not read {topic} at {settings.kafka.bootstrap_servers} ({exc})") from exc
    finally:
        consumer.close()
    return entries, malformed


def show(settings: Settings, list_name: str, *, include_expired: bool = False,
         now_ms: int | None = None) -> list[ListEntry]:
    """The entries of `list_name`, oldest first; expired ones only with `include_expired`."""
    entries, _ = read_entries(settings, list_name)
    return _oldest_first(entries.values(), include_expired, int(time.time() * 1000) if now_ms is None else now_ms)


def _oldest_first(entries: Iterable[ListEntry], include_expired: bool, now_ms: int) -> list[ListEntry]:
    return sorted((entry for entry in entries if include_expired or not entry.expired(now_ms)),
                  key=lambda entry: (entry.added_at_ms, entry.value))


# ---------------------------------------------------------------------------------------------- commands

lists_app = typer.Typer(
    help="Live lists (blocked_ips, trusted_accounts, ...) that rules test with `event.ip in lists.blocked_ips`. "
         "Every running worker sees a change within 2 s; every change is audited.",
    no_args_is_help=True, rich_markup_mode=None,
)
ConfigOption = typer.Option(None, "--config", "-c", help="YAML config (default config/monitor.yaml or "
                                                          "$FRAUDMON_CONFIG).")
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
    shown = _oldest_first(entries.values(), expired, now_ms)
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
