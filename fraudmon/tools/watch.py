"""`fraudmon tail` and `fraudmon topics`: look at the output topics and consumer lag without writing a consumer.

The local stack ships no Kafka console tools, so these read Kafka directly with kafka-python: `tail` assigns the
topic's partitions by hand (no consumer group, nothing committed, so it never disturbs the worker), `topics` asks
the admin API for topics, partitions, end offsets and each consumer group's committed offsets.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from fraudmon.core.config import Settings
from fraudmon.core.errors import WatchError
from stream_app.lists import printable

VERDICTS_TOPIC = "transaction-verdicts"
CONNECT_TIMEOUT_MS = 5_000  # kafka-python waits 30 s for a first broker by default; a CLI should answer sooner
CLOSE_TIMEOUT_MS = 2000  # Ctrl-C on `tail --follow` ends it within this, whatever the broker is doing
RAW_LIMIT = 200  # characters of a non-JSON value, or of a compact JSON value, printed on one line
POLL_MS = 500


def resolve_topic(settings: Settings, name: str) -> str:
    """The topic behind a short name (flagged, scores, dlq, verdicts); any other name is taken as a topic."""
    short = {
        "flagged": settings.topics.flagged,
        "scores": settings.topics.scores,
        "dlq": settings.topics.dead_letter,
        "verdicts": VERDICTS_TOPIC,
    }
    return short.get(name, name)


def _no_broker(settings: Settings, exc: Exception) -> WatchError:
    return WatchError(
        f"no Kafka broker answers at {settings.kafka.bootstrap_servers} ({exc}); start the local stack with "
        "`fraudmon stack up`, or point FRAUDMON_KAFKA_BOOTSTRAP at your broker"
    )


def _consumer(settings: Settings) -> KafkaConsumer:
    """A consumer without a group: partitions are assigned by hand and nothing is ever committed."""
    try:
        return KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False,
            bootstrap_timeout_ms=CONNECT_TIMEOUT_MS, **settings.kafka.client_options(),
        )
    except KafkaError as exc:
        raise _no_broker(settings, exc) from exc


def _admin(settings: Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.kafka.bootstrap_servers, bootstrap_timeout_ms=CONNECT_TIMEOUT_MS,
            **settings.kafka.client_options(),
        )
    except KafkaError as exc:
        raise _no_broker(settings, exc) from exc


# ---------------------------------------------------------------------------------------------------- tail


@dataclass(frozen=True)
class Entry:
    """One record with its key as text and its value parsed (`value` is None and `is_json` False otherwise)."""

    record: ConsumerRecord
    key: str | None
    value: Any
    is_json: bool

    @classmethod
    def of(cls, record: ConsumerRecord) -> Entry:
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        try:
            return cls(record, key, json.loads(record.value), True)
        except (TypeError, ValueError):  # a tombstone (None), invalid UTF-8, or not JSON
            return cls(record, key, None, False)

    def raw_text(self) -> str:
        return "(null)" if self.record.value is None else self.record.value.decode("utf-8", "replace")


def _account_filter(account: str | None) -> Callable[[Entry], bool]:
    """Records of one account: keyed by it (every output topic is keyed by account), or naming it in the value."""
    if account is None:
        return lambda entry: True
    return lambda entry: entry.key == account or (isinstance(entry.value, dict)
                                                  and entry.value.get("account_id") == account)


def _truncate(text: str, limit: int = RAW_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record_time(entry: Entry) -> str:
    return datetime.fromtimestamp(entry.record.timestamp / 1000, UTC).isoformat(timespec="milliseconds")


def format_entry(entry: Entry) -> str:
    """One readable line, chosen by the value's shape: decision, dead letter, verdict, or anything else."""
    value = entry.value
    if not entry.is_json:
        return f"{entry.key or '-'}  (not JSON) {_truncate(entry.raw_text())}"
    if isinstance(value, dict) and "decision" in value:
        return printable(_format_decision(entry, value))
    if isinstance(value, dict) and "error" in value and ("raw" in value or "received_at" in value):
        where = f"{value.get('topic', '?')}/{value.get('partition', '?')}@{value.get('offset', '?')}"
        return f"{value.get('received_at') or _record_time(entry)}  dead letter  {where}  {value['error']}"
    if isinstance(value, dict) and "label" in value and "transaction_id" in value:
        return printable(f"verdict  {value['transaction_id']}  {value['label']}  by {value.get('reviewer') or '?'}")
    return f"{entry.key or '-'}  {_truncate(json.dumps(value, separators=(',', ':'), ensure_ascii=False))}"


def _format_decision(entry: Entry, value: dict) -> str:
    amount = value.get("amount")
    amount_text = f"{amount:>10.2f}" if isinstance(amount, int | float) else f"{amount!s:>10}"
    amount_text += f" {value['currency']}" if value.get("currency") else ""
    reasons = ",".join(value.get("reasons") or []) or "-"
    model = value.get("model") if isinstance(value.get("model"), dict) else {}
    top = [f.get("field") or f.get("name") for f in model.get("top_features") or [] if isinstance(f, dict)]
    risk = value.get("risk_score")
    reasons += f"  risk {risk:.3f}" if isinstance(risk, int | float) else ""
    line = (f"{value.get('event_time') or _record_time(entry)}  {value.get('account_id', entry.key)}  "
            f"{amount_text}  {str(value.get('action') or value['decision']).upper():<6}  reasons: {reasons}")
    if top:
        line += f"  top: {', '.join(str(name) for name in top)}"
    return line + f"  ({value.get('transaction_id', '?')})"


def _stream(consumer: KafkaConsumer, start: dict[TopicPartition, int],
            stop: dict[TopicPartition, int] | None) -> Iterator[Entry]:
    """Records from `start` on, per partition; up to (not including) `stop`, or forever when `stop` is None."""
    if stop is not None:
        start = {tp: offset for tp, offset in start.items() if offset < stop[tp]}
    if not start:
        return
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    while stop is None or any(consumer.position(tp) < stop[tp] for tp in start):
        for tp, records in consumer.poll(timeout_ms=POLL_MS).items():
            yield from (Entry.of(r) for r in records if stop is None or r.offset < stop[tp])


def _backlog(consumer: KafkaConsumer, begin: dict[TopicPartition, int], end: dict[TopicPartition, int], n: int,
             match: Callable[[Entry], bool]) -> list[Entry]:
    """The last `n` matching records before `end`, oldest first. Reads backwards in growing windows per partition
    so that `--account` finds an account's older records without reading the whole topic when it need not."""
    if n == 0:
        return []
    lower, found, window = dict(end), [], n
    oldest_read: dict[TopicPartition, int] = {}  # per partition, the earliest timestamp read so far
    while True:
        ranges = {tp: max(begin[tp], lower[tp] - window) for tp in end}
        for entry in _stream(consumer, ranges, lower):
            tp = TopicPartition(entry.record.topic, entry.record.partition)
            oldest_read[tp] = min(oldest_read.get(tp, entry.record.timestamp), entry.record.timestamp)
            if match(entry):
                found.append(entry)
        lower, window = ranges, window * 4
        found.sort(key=lambda e: (e.record.timestamp, e.record.partition, e.record.offset))
        unread = [oldest_read.get(tp, sys.maxsize) for tp in end if lower[tp] > begin[tp]]
        # Done when nothing is left, or when every unread (older) record is older than the n-th newest match.
        if not unread or (len(found) >= n and found[-n].record.timestamp >= max(unread)):
            return found[-n:]


def _partitions(consumer: KafkaConsumer, topic: str, wait_s: float = 10.0) -> list[TopicPartition]:
    """The topic's partitions. The client's metadata can lag behind `topics()` on a busy broker: ask again for a
    while rather than read nothing and end as if the topic were empty."""
    deadline = time.monotonic() + wait_s
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        if time.monotonic() > deadline:
            raise WatchError(f"the broker gave no partitions for topic {topic!r} within {wait_s:.0f}s; try again")
        consumer.topics()  # a metadata request
        time.sleep(0.2)


def tail(settings: Settings, topic: str, *, follow: bool = False, from_beginning: bool = False, last: int = 20,
         account: str | None = None, as_json: bool = False, max_records: int | None = None) -> int:
    """Print a topic's records, one line each (or one JSON value per line); return how many were printed.

    Without `from_beginning`: the last `last` records, then new ones while `follow`. With it: everything from the
    start, up to the end offsets sampled now (or on and on while `follow`). `max_records` stops it early."""
    consumer = _consumer(settings)
    try:
        existing = consumer.topics()
        if topic not in existing:
            raise WatchError(f"topic {topic!r} does not exist; topics: {', '.join(sorted(existing)) or 'none'}")
        partitions = _partitions(consumer, topic)
        begin, end = consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
        match = _account_filter(account)
        entries: Iterable[Entry]
        if from_beginning:
            entries = _stream(consumer, begin, None if follow else end)
        else:
            backlog = _backlog(consumer, begin, end, last, match)
            entries = chain(backlog, _stream(consumer, end, None)) if follow else backlog
        printed = 0
        for entry in entries:
            if not match(entry):
                continue
            if as_json and not entry.is_json:
                print(f"skipped a value that is not JSON: partition {entry.record.partition} offset "
                      f"{entry.record.offset}: {_truncate(entry.raw_text(), 60)}", file=sys.stderr, flush=True)
                continue
            print(json.dumps(entry.value, ensure_ascii=False) if as_json else format_entry(entry), flush=True)
            printed += 1
            if max_records is not None and printed >= max_records:
                break
        return printed
    except KafkaError as exc:
        raise WatchError(f"reading {topic} failed: {exc}") from exc
    finally:
        consumer.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)  # no group: nothing to commit or leave


# ---------------------------------------------------------------------------------------------------- topics


def topic_report(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Topics (internal `__*` ones left out) with partitions and messages (sum of end offsets: everything ever
    written, retention not subtracted), and per consumer group its lag per topic: the sum over the partitions it
    has committed of end offset - committed offset."""
    admin = _admin(settings)
    consumer = _consumer(settings)
    try:
        names = sorted(name for name in admin.list_topics() if not name.startswith("__"))
        described = admin.describe_topics(names) if names else []
        partitions = {t["name"]: sorted(p["partition_index"] for p in t["partitions"])
                      for t in described if not t["error_code"]}
        end = consumer.end_offsets([TopicPartition(t, p) for t, ps in partitions.items() for p in ps])
        topics = [
            {"topic": name, "partitions": len(ps), "messages": sum(end[TopicPartition(name, p)] for p in ps)}
            for name, ps in sorted(partitions.items())
        ]
        groups = []
        for group in sorted(admin.list_groups(), key=lambda g: g["group_id"]):
            group_id = group["group_id"]
            lag: dict[str, int] = defaultdict(int)
            for tp, committed in admin.list_group_offsets([group_id]).get(group_id, {}).items():
                if tp in end and committed.offset >= 0:
                    lag[tp.topic] += max(0, end[tp] - committed.offset)
            groups.append({"group": group_id, "state": group.get("group_state"), "lag": dict(sorted(lag.items()))})
        return {"topics": topics, "groups": groups}
    except KafkaError as exc:
        raise WatchError(f"asking Kafka for topics and consumer groups failed: {exc}") from exc
    finally:
        consumer.close()
        admin.close()


def format_report(report: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The report as two aligned tables: topics, then consumer groups with their lag per topic."""
    width = max([len(t["topic"]) for t in report["topics"]] + [len(g["group"]) for g in report["groups"]] + [24])
    lines = [f"{'TOPIC':<{width}}  {'PARTITIONS':>10}  {'MESSAGES':>12}"]
    lines += [f"{t['topic']:<{width}}  {t['partitions']:>10}  {t['messages']:>12,}" for t in report["topics"]]
    if not report["groups"]:
        return [*lines, "", "no consumer groups"]
    lines += ["", f"{'GROUP':<{width}}  {'STATE':<12}  {'TOPIC':<{width}}  {'LAG':>10}"]
    for group in report["groups"]:
        state = group["state"] or "?"
        if not group["lag"]:
            lines.append(f"{group['group']:<{width}}  {state:<12}  (no committed offsets)")
        for topic, lag in group["lag"].items():
            lines.append(f"{group['group']:<{width}}  {state:<12}  {topic:<{width}}  {lag:>10,}")
    return lines
