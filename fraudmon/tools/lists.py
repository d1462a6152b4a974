"""`fraudmon lists add|remove|show`: edit the live lists that rules test with `event.ip in lists.blocked_ips`.

A change is one record on the compacted lists topic (every running worker follows it and sees the change within
2 s), written after its record on the audit topic (who, when, what, why). `show` reads the lists topic from its
start, as a worker does. The format and the checks live in `stream_app.lists`.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.errors import KafkaError

from fraudmon.core.config import Settings
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
    return oldest_first(entries.values(), include_expired, int(time.time() * 1000) if now_ms is None else now_ms)


def oldest_first(entries: Iterable[ListEntry], include_expired: bool, now_ms: int) -> list[ListEntry]:
    return sorted((entry for entry in entries if include_expired or not entry.expired(now_ms)),
                  key=lambda entry: (entry.added_at_ms, entry.value))
