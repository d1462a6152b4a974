"""Live lists: named sets of values (blocked IPs, trusted accounts, blocked devices) that rules test with `in`.

The lists topic (`topics.lists`) is compacted and holds one record per entry: key `<list>:<value>` (UTF-8), value
the entry as JSON, `{"list", "value", "reason", "author", "added_at", "expires_at" | null}`, or a tombstone (no
value) once the entry is removed. Compaction keeps the last record of each key, so the topic read from its start
is the lists' current state. Every add and remove is also written to the audit topic (`topics.lists_audit`, not
compacted, long retention) with who, when, what and why, before the change itself: no change goes unaudited.

`ListFollower` keeps a worker's copy in memory: it loads the topic to its end before the worker decides, then
follows it. `current()` gives the rules a mapping of list name to a container whose `in` is a dict lookup and
one comparison with a clock read once per `current()` call (once per batch), whatever the size of the list.
`StaticLists` is the same view over a JSON lines file of entries, for offline replay.
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
import time
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fraudmon.core.config import Settings, TopicSettings
from fraudmon.core.errors import FraudMonitorError, InvalidEvent
from fraudmon.core.events import format_timestamp, parse_timestamp

log = logging.getLogger(__name__)

LIST_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_VALUE_CHARS = 256  # values are matched against event fields (ids, IPs, devices): 64 characters in the contract
MAX_REASON_CHARS = 500
MAX_AUTHOR_CHARS = 64
MAX_RECORD_BYTES = 8192  # a valid entry is at most about 2.5 KB of JSON; anything larger is malformed
MAX_TTL_MS = 3650 * 86_400_000  # ten years; an entry without a TTL never expires
LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last moment ISO 8601 writes with four digits
CONNECT_TIMEOUT_MS = 5_000  # how long a client waits for a first broker (kafka-python's default is 30 s)
NEVER = 1 << 62  # the expiry of an entry without a TTL: later than any clock, so `in` is one comparison
TTL_PART = re.compile(r"(\d{1,9})(w|d|h|m|s)")
UNIT_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}
ENTRY_FIELDS = ("list", "value", "reason", "author", "added_at", "expires_at")

# Topic configs. The lists topic: compacted, with segments that roll and clean soon, so the log a new follower
# reads stays near the number of live entries; tombstones stay a day, for followers that were away. The audit
# topic: deleted by age only (never by size), kept forever unless `topics.lists_audit_retention_days` says.
LISTS_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(10 * 60_000),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": str(86_400_000),
}
LISTS_PARTITIONS = 1  # a configuration topic: one partition keeps every change in one order (and the audit too)


class ListsError(FraudMonitorError, ValueError):
    """A list name, value, TTL, reason or author is invalid, or a record of the lists topic is malformed."""


class ListsUnavailable(FraudMonitorError):
    """The lists topic could not be read (no broker, no topic, no permission) in the time allowed."""


def printable(text: str, limit: int | None = None) -> str:
    """`text` safe to print on one line: control, format and other invisible characters escaped as `\\xNN` /
    `\\uNNNN` (a list value comes from an attacker), a backslash doubled; cut to `limit` characters with `…`."""
    if text.isprintable() and "\\" not in text:
        shown = text
    else:
        shown = "".join(ch if ch.isprintable() and ch != "\\" else ch.encode("unicode_escape").decode("ascii")
                        for ch in text)
    return shown if limit is None or len(shown) <= limit else shown[: limit - 1] + "…"


def check_list_name(name: Any) -> str:
    """A list name: `[a-z][a-z0-9_]{0,63}` (it becomes `lists.<name>` in a rule)."""
    if not isinstance(name, str) or not LIST_NAME.fullmatch(name):
        shown = printable(name, 70) if isinstance(name, str) else type(name).__name__
        raise ListsError(f"list name '{shown}' must be a lower-case letter then up to 63 lower-case letters, "
                         "digits or _ (e.g. blocked_ips)")
    return name


def _check_text(what: str, text: Any, max_chars: int, empty_ok: bool) -> str:
    if not isinstance(text, str):
        raise ListsError(f"{what} must be text, not {type(text).__name__}")
    if not text and not empty_ok:
        raise ListsError(f"{what} must not be empty")
    if len(text) > max_chars:
        raise ListsError(f"{what} '{printable(text, 40)}' is {len(text)} characters long, over {max_chars}")
    if text.isprintable():
        return text
    for position, ch in enumerate(text):
        if not ch.isprintable():
            raise ListsError(f"{what} '{printable(text, 60)}' holds the control character "
                             f"'{printable(ch)}' at position {position}; such values are refused")
    return text


def check_value(value: Any) -> str:
    """A list value: 1..256 printable characters (no control, format or line-breaking character), without
    surrounding spaces (an event field never matches ` 203.0.113.7`)."""
    _check_text("value", value, MAX_VALUE_CHARS, empty_ok=False)
    if value != value.strip():
        raise ListsError(f"value '{printable(value, 60)}' has spaces around it; drop them")
    return value


def check_reason(reason: Any) -> str:
    return _check_text("reason", reason, MAX_REASON_CHARS, empty_ok=True)


def check_author(author: Any) -> str:
    return _check_text("author", author, MAX_AUTHOR_CHARS, empty_ok=False)


def parse_ttl_ms(text: str) -> int:
    """A TTL such as `30s`, `15m`, `24h`, `7d`, `2w` or `1d12h` in milliseconds (above 0, at most ten years)."""
    cleaned = text.strip().lower() if isinstance(text, str) else ""
    parts = TTL_PART.findall(cleaned)
    if not parts or "".join(number + unit for number, unit in parts) != cleaned:
        raise ListsError(f"TTL '{printable(str(text), 40)}' is not a duration (use e.g. 30m, 24h, 7d, 2w, 1d12h)")
    ttl_ms = sum(int(number) * UNIT_MS[unit] for number, unit in parts)
    if not 0 < ttl_ms <= MAX_TTL_MS:
        raise ListsError(f"TTL {printable(cleaned)} must be above 0 and at most 3650d (leave --ttl out for an "
                         "entry that never expires)")
    return ttl_ms


def entry_key(list_name: str, value: str) -> bytes:
    """The record key of an entry, `<list>:<value>` in UTF-8 (a list name holds no `:`, so it splits back)."""
    return f"{list_name}:{value}".encode()


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One entry of a list. Times are epoch milliseconds; `expires_at_ms` None: never expires."""

    list: str
    value: str
    reason: str
    author: str
    added_at_ms: int
    expires_at_ms: int | None = None

    @classmethod
    def new(cls, list_name: str, value: str, *, reason: str = "", author: str, ttl_ms: int | None = None,
            now_ms: int | None = None) -> ListEntry:
        """A checked entry added now (or at `now_ms`), expiring `ttl_ms` later; raises ListsError."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return cls(check_list_name(list_name), check_value(value), check_reason(reason), check_author(author),
                   now_ms, None if ttl_ms is None else now_ms + ttl_ms)

    @property
    def key(self) -> bytes:
        return entry_key(self.list, self.value)

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and self.expires_at_ms <= now_ms

    def to_dict(self) -> dict[str, Any]:
        return {"list": self.list, "value": self.value, "reason": self.reason, "author": self.author,
                "added_at": format_timestamp(self.added_at_ms),
                "expires_at": None if self.expires_at_ms is None else format_timestamp(self.expires_at_ms)}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _time_field(data: Mapping[str, Any], name: str) -> int:
    try:
        return parse_timestamp(data[name], name, low_ms=0, high_ms=LATEST_MS)
    except InvalidEvent as exc:
        raise ListsError(str(exc)) from None


def entry_from_dict(data: Any, where: str = "entry") -> ListEntry:
    """An entry from its JSON form (all six fields; others are ignored); raises ListsError naming the field."""
    if not isinstance(data, dict):
        raise ListsError(f"{where}: must be a JSON object with {', '.join(ENTRY_FIELDS)}")
    missing = [name for name in ENTRY_FIELDS if name not in data]
    if missing:
        raise ListsError(f"{where}: lacks {', '.join(missing)}")
    expires = None if data["expires_at"] is None else _time_field(data, "expires_at")
    return ListEntry(check_list_name(data["list"]), check_value(data["value"]), check_reason(data["reason"]),
                     check_author(data["author"]), _time_field(data, "added_at"), expires)


def parse_record(key: bytes | None, value: bytes | None) -> tuple[str, str, ListEntry | None]:
    """`(list, value, entry)` of one record of the lists topic, `entry` None for a tombstone; raises ListsError
    when the key or value is malformed or they disagree."""
    if key is None or len(key) > MAX_RECORD_BYTES:
        raise ListsError("record has no key" if key is None else "key is too long")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise ListsError(f"key '{printable(key.decode('utf-8', 'replace'), 80)}' is not UTF-8") from None
    list_name, colon, list_value = text.partition(":")
    if not colon:
        raise ListsError(f"key '{printable(text, 80)}' is not <list>:<value>")
    check_list_name(list_name)
    check_value(list_value)
    if value is None:
        return list_name, list_value, None
    if len(value) > MAX_RECORD_BYTES:
        raise ListsError(f"value is {len(value)} bytes, over {MAX_RECORD_BYTES}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ListsError(f"value '{printable(value.decode('utf-8', 'replace'), 80)}' is not JSON") from None
    entry = entry_from_dict(data)
    if (entry.list, entry.value) != (list_name, list_value):
        raise ListsError(f"key '{printable(text, 80)}' names another entry than its value "
                         f"({printable(entry.list)}:{printable(entry.value, 80)})")
    return list_name, list_value, entry


def audit_record(action: str, list_name: str, value: str, *, author: str, reason: str = "",
                 at_ms: int | None = None, expires_at_ms: int | None = None) -> bytes:
    """The audit topic's record of one change: `{"action": "add"|"remove", "list", "value", "author", "at",
    "reason", "expires_at"}` (keyed like the entry, so one entry's history stays in order)."""
    at_ms = int(time.time() * 1000) if at_ms is None else at_ms
    return orjson.dumps({
        "action": action, "list": list_name, "value": value, "author": author, "at": format_timestamp(at_ms),
        "reason": reason, "expires_at": None if expires_at_ms is None else format_timestamp(expires_at_ms),
    })


def audit_topic_config(topics: TopicSettings) -> dict[str, str]:
    days = topics.lists_audit_retention_days
    return {"cleanup.policy": "delete", "retention.bytes": "-1",
            "retention.ms": "-1" if days is None else str(days * 86_400_000)}


def ensure_lists_topics(bootstrap: str, topics: TopicSettings, client_options: Mapping[str, Any] | None = None,
                        *, audit: bool = True) -> list[str]:
    """Create the lists topic (compacted) and, with `audit`, its audit topic where they are missing; return the
    names created. An existing topic is left as it is (its configs are not checked)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = {topics.lists: LISTS_TOPIC_CONFIG}
    if audit:
        wanted[topics.lists_audit] = audit_topic_config(topics)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=15_000,
                                 bootstrap_timeout_ms=CONNECT_TIMEOUT_MS, **(client_options or {}))
    except KafkaError as exc:
        raise ListsUnavailable(f"no Kafka broker answers at {bootstrap} ({exc.__class__.__name__}): start the "
                               "stack (`fraudmon stack up`) or check kafka.bootstrap_servers") from exc
    try:
        missing = [name for name in wanted if name not in set(admin.list_topics())]
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, LISTS_PARTITIONS, topics.replication_factor,
                                              topic_configs=wanted[name])], wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass
        return missing
    except KafkaError as exc:
        by_hand = "; ".join(f"{name} with {configs}" for name, configs in wanted.items())
        raise ListsUnavailable(f"could not create the lists topics at {bootstrap} ({exc}): create them by hand, "
                               f"{by_hand}") from exc
    finally:
        admin.close()


# ------------------------------------------------------------------------------------------------- lookups


class ListView(Container[str]):
    """One list as a rule sees it: `value in view` is true for an entry that has not expired at `now_ms`."""

    __slots__ = ("_expiry", "_now")

    def __init__(self, expiry: Mapping[str, int], now_ms: int) -> None:
        self._expiry = expiry
        self._now = now_ms

    def __contains__(self, value: object) -> bool:
        expires = self._expiry.get(value)  # type: ignore[call-overload]
        return expires is not None and expires > self._now

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included (a count, never used per event)."""
        return len(self._expiry)

    def __repr__(self) -> str:
        return f"<ListView {len(self._expiry)} entries at {format_timestamp(self._now)}>"


_EMPTY: dict[str, int] = {}


class ListsSnapshot(dict):
    """Every list by name, at one moment (`now_ms`). A name without entries reads as an empty list, so a rule
    over a declared list that no one has added to yet is simply false. The containers are live: a change that
    arrives during a batch may be seen by its later events."""

    def __init__(self, lists: Mapping[str, Mapping[str, int]], now_ms: int) -> None:
        super().__init__({name: ListView(expiry, now_ms) for name, expiry in lists.items()})
        self.now_ms = now_ms

    def __missing__(self, name: str) -> ListView:
        return ListView(_EMPTY, self.now_ms)


class ListStore:
    """Lists as entries' expiry times, `{list: {value: expires_at_ms}}` (never: NEVER), built from records.

    Expired entries are dropped by `expire()` (a heap of the entries with a TTL, so no scan of a large list);
    `in` does not depend on it, since a view compares the expiry with its own clock."""

    def __init__(self) -> None:
        self.lists: dict[str, dict[str, int]] = {}
        self._expiries: list[tuple[int, str, str]] = []

    def put(self, entry: ListEntry) -> None:
        expires = NEVER if entry.expires_at_ms is None else entry.expires_at_ms
        values = self.lists.get(entry.list)
        if values is None:
            values = self.lists[entry.list] = {}
        values[entry.value] = expires
        if expires != NEVER:
            heapq.heappush(self._expiries, (expires, entry.list, entry.value))

    def delete(self, list_name: str, value: str) -> None:
        values = self.lists.get(list_name)
        if values is not None:
            values.pop(value, None)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the lists topic; raises ListsError (and changes nothing) when it is malformed."""
        list_name, list_value, entry = parse_record(key, value)
        if entry is None:
            self.delete(list_name, list_value)
        else:
            self.put(entry)

    def expire(self, now_ms: int) -> int:
        """Drop the entries expired at `now_ms`; return how many."""
        dropped = 0
        while self._expiries and self._expiries[0][0] <= now_ms:
            expires, list_name, value = heapq.heappop(self._expiries)
            values = self.lists.get(list_name)
            if values is not None and values.get(value) == expires:  # not re-added or removed since
                del values[value]
                dropped += 1
        return dropped

    def snapshot(self, now_ms: int | None = None) -> ListsSnapshot:
        return ListsSnapshot(self.lists, int(time.time() * 1000) if now_ms is None else now_ms)

    def size(self) -> int:
        return sum(len(values) for values in self.lists.values())


class StaticLists:
    """Lists fixed in memory, for offline replay (`fraudmon replay --lists FILE`): the same `current()` as
    `ListFollower`, over entries given here or read from a JSON lines file."""

    def __init__(self, entries: Iterable[ListEntry] = ()) -> None:
        self.store = ListStore()
        for entry in entries:
            self.store.put(entry)

    @classmethod
    def from_file(cls, path: str | Path) -> StaticLists:
        """Entries from a JSON lines file, one entry a line in the topic's form (blank lines skipped); raises
        ListsError naming the line of a malformed one."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ListsError(f"cannot read lists file {path}: {exc}") from exc
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(entry_from_dict(orjson.loads(line), f"{path}:{number}"))
            except orjson.JSONDecodeError:
                raise ListsError(f"{path}:{number}: not a JSON object") from None
            except ListsError as exc:
                message = str(exc)
                raise ListsError(message if message.startswith(f"{path}:") else f"{path}:{number}: {message}") \
                    from None
        return cls(entries)

    def current(self, now_ms: int | None = None) -> ListsSnapshot:
        """Every list at `now_ms` (default: now); replay may pass the event time."""
        return self.store.snapshot(now_ms)


# ------------------------------------------------------------------------------------------------ follower


def open_from_start(settings: Settings, topic: str, client_id: str) -> tuple[Any, dict[Any, int]]:
    """A kafka-python consumer without a group (nothing committed) on every partition of `topic` from its
    beginning, and the partitions' end offsets now; raises ListsUnavailable (no broker, no topic)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    kafka = settings.kafka
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers.split(","), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", allow_auto_create_topics=False, fetch_max_wait_ms=100,
            max_poll_records=10_000, max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024,
            bootstrap_timeout_ms=CONNECT_TIMEOUT_MS, client_id=client_id,
            **kafka.client_options(),
        )
    except KafkaError as exc:
        raise ListsUnavailable(f"no Kafka broker answers at {kafka.bootstrap_servers} ({exc.__class__.__name__}): "
                               "start the stack (`fraudmon stack up`) or check kafka.bootstrap_servers") from exc
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ListsUnavailable(f"topic {topic} does not exist at {kafka.bootstrap_servers} (`fraudmon stack up` "
                                   "and `fraudmon lists add` create it)")
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        return consumer, consumer.end_offsets(assigned)
    except KafkaError as exc:
        consumer.close()
        raise ListsUnavailable(f"could not read topic {topic} at {kafka.bootstrap_servers} ({exc})") from exc
    except BaseException:
        consumer.close()
        raise


def reached(consumer: Any, ends: Mapping[Any, int]) -> bool:
    """Whether `consumer` has read every partition up to the offsets in `ends`."""
    return all(consumer.position(partition) >= end for partition, end in ends.items())


class ListFollower:
    """A worker's in-memory copy of the lists topic, kept current by a background thread.

    The thread reads every partition from the beginning (a consumer without a group: nothing is committed, every
    worker reads everything), marks the copy loaded once it reaches the end offsets it found at start, then
    follows new records (a change shows within about `poll_s` + the fetch wait, well under 2 s). Malformed
    records are logged and skipped; a broker outage is waited out. Use:

        follower = ListFollower(settings).start()
        follower.wait_loaded(timeout_s)   # before the first decision; raises ListsUnavailable
        lists = follower.current()        # once per batch
        ...
        follower.stop()
    """

    def __init__(self, settings: Settings, topic: str | None = None, *, poll_s: float = 0.2,
                 create_topic: bool = True) -> None:
        self.settings = settings
        self.topic = topic or settings.topics.lists
        self.poll_s = poll_s
        self.create_topic = create_topic
        self.store = ListStore()
        self.records = 0  # records applied (entries and tombstones)
        self.malformed = 0  # records skipped as malformed
        self._loaded = threading.Event()
        self._stopping = threading.Event()
        self._problem = "no answer from Kafka yet"  # why it is not loaded yet, for wait_loaded's error
        self._thread: threading.Thread | None = None

    # ---- the worker's side ------------------------------------------------------------------------------
    def start(self) -> ListFollower:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"list-follower-{self.topic}", daemon=True)
            self._thread.start()
        return self

    def wait_loaded(self, timeout_s: float) -> None:
        """Block until the topic has been read to the end offsets found at start; raise ListsUnavailable (saying
        why) after `timeout_s`."""
        if self._thread is None:
            raise ListsUnavailable("ListFollower.wait_loaded() before start()")
        if not self._loaded.wait(timeout_s):
            raise ListsUnavailable(
                f"the lists topic {self.topic} at {self.settings.kafka.bootstrap_servers} was not read within "
                f"{timeout_s:g}s: {self._problem}")

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def current(self, now_ms: int | None = None) -> ListsSnapshot:
        """Every list as of now (or `now_ms`): a Mapping[str, Container[str]] for the rules, one per batch."""
        return self.store.snapshot(now_ms)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> ListFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                consumer = self._connect()
            except Exception as exc:  # noqa: BLE001 - any failure to connect is waited out, and said
                self._problem = _why(exc)
                log.warning("lists: cannot read %s yet (%s); retrying", self.topic, self._problem)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                self._follow(consumer)
            finally:
                consumer.close()
            return

    def _connect(self) -> Any:
        if self.create_topic:
            topics = self.settings.topics.model_copy(update={"lists": self.topic})
            ensure_lists_topics(self.settings.kafka.bootstrap_servers, topics, self.settings.kafka.client_options(),
                                audit=False)
        consumer, self._ends = open_from_start(self.settings, self.topic, "fraudmon-list-follower")
        return consumer

    def _follow(self, consumer) -> None:
        from kafka.errors import KafkaError

        last_warning = 0.0
        while not self._stopping.is_set():
            try:
                batch = consumer.poll(timeout_ms=int(self.poll_s * 1000))
                for records in batch.values():
                    for record in records:
                        self._apply(record)
                if not self._loaded.is_set() and reached(consumer, self._ends):
                    self._loaded.set()
                    log.info("lists: loaded %d entries of %d lists from %s (%d malformed records skipped)",
                             self.store.size(), len(self.store.lists), self.topic, self.malformed)
                self.store.expire(int(time.time() * 1000))
            except Exception as exc:  # noqa: BLE001 - the client reconnects by itself; the thread never dies
                self._problem = _why(exc)
                if time.monotonic() - last_warning > 30:
                    last_warning = time.monotonic()
                    log.warning("lists: reading %s failed (%s); retrying", self.topic, self._problem,
                                exc_info=not isinstance(exc, KafkaError))
                self._stopping.wait(0.5)

    def _apply(self, record: Any) -> None:
        try:
            self.store.apply(record.key, record.value)
            self.records += 1
        except ListsError as exc:
            self.malformed += 1
            if self.malformed <= 20 or self.malformed % 1000 == 0:
                log.warning("lists: skipped malformed record %s[%d]@%d (%d so far): %s", self.topic,
                            record.partition, record.offset, self.malformed, exc)


def _why(exc: Exception) -> str:
    text = printable(str(exc), 400)
    return text if isinstance(exc, FraudMonitorError) else f"{exc.__class__.__name__}: {text}"


def load_static_lists(path: str | Path, now_ms: int | None = None) -> ListsSnapshot:
    """The lists of a JSON lines file of entries (`fraudmon lists show NAME --json` writes one) as a rule sees
    them at `now_ms` (default: now): for `fraudmon replay --lists FILE`. Raises ListsError."""
    return StaticLists.from_file(path).current(now_ms)
