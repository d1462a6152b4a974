"""The event gate: valid events parse, anything else is refused with a reason naming the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.schema import InvalidEvent, event_from_dict, event_to_dict, parse_event

VALID = {
    "transaction_id": "tx-0001", "account_id": "acc-42", "amount": 129.95, "currency": "EUR",
    "timestamp": "2026-11-22T10:15:00.123Z", "merchant_id": "m-77", "merchant_category": "5411",
    "country": "DE", "ip": "203.0.113.7", "device_id": "dev-9", "channel": "ecommerce",
    "counterparty_id": "acc-99", "account_created_at": "2026-11-01T00:00:00Z",
    "features": {"V1": -1.36, "V2": -0.07}, "unknown_extra": "ignored",
}


def test_spec_example_parses():
    event = parse_event(json.dumps(VALID).encode())
    assert event.transaction_id == "tx-0001" and event.amount == 129.95
    assert event.timestamp_ms == 1795342500123
    assert event.event_time == "2026-11-22T10:15:00.123Z"
    assert event.features == {"V1": -1.36, "V2": -0.07}


def test_epoch_milliseconds_timestamp():
    event = event_from_dict({**VALID, "timestamp": 1795342500123})
    assert event.event_time == "2026-11-22T10:15:00.123Z"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "message: not JSON"),
        (b"\xff\xfe", "message: not JSON"),
        (b"[1, 2]", "event: must be a JSON object"),
        (None, "tombstone"),
        (json.dumps({**VALID, "amount": None}).encode(), "amount: required"),
        (b'{"transaction_id":"t","account_id":"a","amount":NaN,"timestamp":1}', "amount: must be finite"),
        (json.dumps({**VALID, "amount": -1}).encode(), "amount: must be >= 0"),
        (json.dumps({**VALID, "amount": "12"}).encode(), "amount: must be a number"),
        (json.dumps({**VALID, "timestamp": "2026-11-22T10:15:00"}).encode(), "has no time zone"),
        (json.dumps({**VALID, "timestamp": "yesterday"}).encode(), "is not ISO 8601"),
        (json.dumps({k: v for k, v in VALID.items() if k != "account_id"}).encode(), "account_id: required"),
        (json.dumps({**VALID, "transaction_id": "x" * 65}).encode(), "longer than 64"),
        (json.dumps({**VALID, "channel": "fax"}).encode(), "channel:"),
        (json.dumps({**VALID, "country": "Germany"}).encode(), "country:"),
        (json.dumps({**VALID, "features": {"V1": "a"}}).encode(), "features.V1"),
        (b'{"pad": "' + b"x" * 70000 + b'"}', "exceeds the limit"),
    ],
)
def test_invalid_events_name_the_reason(raw, reason):
    with pytest.raises(InvalidEvent, match=reason.replace("(", r"\(")):
        parse_event(raw)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_invalid_event(raw):
    try:
        parse_event(raw)
    except InvalidEvent:
        pass


def test_round_trip_through_dict():
    event = event_from_dict(VALID)
    assert event_from_dict(event_to_dict(event)) == event
