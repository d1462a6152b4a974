"""The poison message generator: enough distinct kinds, each refused by the event gate for the reason it names."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from fraudmon.core.events import InvalidEvent, parse_event
from fraudmon.tools.poison import CATEGORIES, interleave, names_field, poison_messages, valid_event


@pytest.fixture(scope="module")
def now_ms() -> int:
    return int(time.time() * 1000)


def test_kinds_are_unique_and_enough(now_ms):
    kinds = [message.kind for message in poison_messages(now_ms)]
    assert len(kinds) >= 120
    assert len(set(kinds)) == len(kinds), [kind for kind, n in Counter(kinds).items() if n > 1]


def test_every_category_has_at_least_five_kinds(now_ms):
    counts = Counter(message.category for message in poison_messages(now_ms))
    assert set(counts) == set(CATEGORIES)
    assert min(counts.values()) >= 5, counts


def test_deterministic_for_a_given_now(now_ms):
    assert poison_messages(now_ms) == poison_messages(now_ms)


def test_required_sizes_are_exact(now_ms):
    values = {message.kind: message.value for message in poison_messages(now_ms)}
    assert len(values["message-65537-bytes"]) == 65_537
    assert len(values["binary-900kb"]) == 900_000
    assert len(orjson.loads(values["features-300-entries"])["features"]) == 300


def test_every_poison_message_is_refused_naming_its_field(now_ms):
    messages = poison_messages(now_ms)
    failures = []
    for message in messages:
        try:
            parse_event(message.value)
        except InvalidEvent as exc:
            if names_field(message, str(exc)):
                continue
            outcome = f"InvalidEvent({str(exc)[:160]!r})"
        except Exception as exc:  # anything but InvalidEvent would crash the worker's consumer loop
            outcome = f"{type(exc).__name__}: {str(exc)[:160]}"
        else:
            outcome = "accepted as valid"
        failures.append(f"{message.kind} [{message.category}]: expected {message.field!r}, got {outcome}")
    assert not failures, f"{len(failures)} of {len(messages)} poison messages mishandled:\n" + "\n".join(failures)


def test_valid_events_parse(now_ms):
    for i in range(50):
        event = parse_event(orjson.dumps(valid_event(i, now_ms)))
        assert event.transaction_id == f"poison-ok-{i}"


def test_interleave_puts_every_poison_message_between_valid_events(now_ms):
    poison = poison_messages(now_ms)
    records = interleave(poison, valid_count=2, now_ms=now_ms)
    assert len(records) == len(poison) + 2 * (len(poison) + 1)
    assert [record.expected for record in records if record.expected is not None] == poison
    for before, record, after in zip(records, records[1:], records[2:], strict=False):
        if record.expected is not None:
            assert before.expected is None and after.expected is None
    valid = [record for record in records if record.expected is None]
    assert len({record.value for record in valid}) == len(valid)
    for record in valid:
        assert parse_event(record.value).account_id.encode() == record.key


def test_error_matching_accepts_sub_fields_and_message_only_where_allowed(now_ms):
    by_kind = {message.kind: message for message in poison_messages(now_ms)}
    assert names_field(by_kind["feature-value-string"], "features.V1: must be a finite number")
    assert names_field(by_kind["duplicate-amount-two-values"], "message: duplicate key 'amount'")
    assert not names_field(by_kind["amount-string"], "message: not JSON")
    assert not names_field(by_kind["amount-string"], "amounts: nonsense")
