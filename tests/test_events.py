"""The event gate: valid events parse, anything else is refused with a reason naming the field."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fraudmon.core.events import (
    EventLimits,
    InvalidEvent,
    event_from_dict,
    event_to_dict,
    format_timestamp,
    parse_event,
    parse_timestamp,
)

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


@pytest.mark.parametrize("text", ["2004-05-25T06:08:35.531Z", "2004-04-10T22:30:34.991Z", "1969-12-31T23:59:59.500Z"])
def test_timestamps_are_exact_to_the_millisecond(text):
    # the float of datetime.timestamp() times 1,000 used to fall a millisecond short on these (the first two)
    whole = datetime.fromisoformat(text[:19] + "+00:00")
    expected = int(whole.timestamp()) * 1000 + int(text[20:23])
    first = parse_timestamp(text, low_ms=-10**6)
    again = parse_timestamp(text, low_ms=-10**6)  # the second is known now: only the milliseconds are read
    other = parse_timestamp(text[:20] + "007Z", low_ms=-10**6)
    assert first == again == expected and other == expected - int(text[20:23]) + 7
    assert format_timestamp(expected) == text


def test_epoch_milliseconds_timestamp():
    event = event_from_dict({**VALID, "timestamp": 1795342500123})
    assert event.event_time == "2026-11-22T10:15:00.123Z"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "message: not valid JSON"),
        (b"\xff\xfe", "message: not UTF-8"),
        (b"[1, 2]", "message: must be a JSON object"),
        (None, "tombstone"),
        (json.dumps({**VALID, "amount": None}).encode(), "amount: required"),
        (b'{"transaction_id":"t","account_id":"a","amount":NaN,"timestamp":1}', "amount: NaN is not"),
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


NOW_MS = 1_795_400_000_000  # 2026-11-22T22:13:20Z


def _with(**changes) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_with(amount=10**400), "amount: an integer of 401 digits"),
        (b'{"transaction_id":"t","account_id":"a","amount":1' + b"0" * 5000 + b',"timestamp":1}', "amount: an integer"),
        (_with(amount=1e308), r"amount: must be <= 1e\+12"),
        (_with(amount=10**20), r"amount: must be <= 1e\+12"),
        (_with(timestamp=1e15), "timestamp: .* is outside"),
        (_with(timestamp=1e19), "timestamp: .* is outside"),
        (_with(timestamp=1e300), "timestamp: .* is outside"),
        (_with(timestamp="9999-12-31T23:59:59-14:00"), "timestamp: .* is outside"),
        (_with(timestamp="0001-01-01T00:00:00+14:00"), "timestamp: .* is outside"),
        (_with(timestamp="1999-12-31T23:59:59Z"), "timestamp: .* is outside"),
        (_with(account_created_at="9999-12-31T23:59:59Z"), "account_created_at: .* is outside"),
        (b'{"transaction_id":"\\ud800","account_id":"a","amount":1,"timestamp":1795342500123}',
         "transaction_id: holds a lone UTF-16 surrogate"),
        (_with(account_id="acc\u0000"), "account_id: .* control"),
        (_with(merchant_id="m\u200b"), "merchant_id: .* control or unprintable"),
        (b'{"transaction_id":"t","account_id":"a","amount":1,"amount":2,"timestamp":1795342500123}',
         "amount: duplicate key"),
        (b'{"transaction_id":"t","account_id":"a","amount":1,"timestamp":1795342500123,'
         b'"features":{"V1":1,"V1" : 2}}', "features.V1: duplicate key"),
        (b"\xef\xbb\xbf" + _with(), "message: starts with a byte order mark"),
        (_with() + b" {}", "message: not valid JSON"),
        (_with(country="1X"), "country:"),
        (_with(currency="EURO"), "currency:"),
        (_with(features={f"f{i}": 1.0 for i in range(300)}), "features: 300 entries"),
        (_with(features={"V1": 1e300}), "features.V1: must be <="),
        (_with(ip="1" * 65), "ip: longer than 64"),
        (_with(merchant_category=12345), "merchant_category:"),
    ],
)
def test_poison_values_are_refused_naming_the_field(raw, reason):
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(raw, now_ms=NOW_MS)


def test_lower_case_codes_are_normalised_and_quoted_colons_are_no_duplicate():
    event = parse_event(_with(country="de", currency="eur", merchant_id='m":77', features={'x":': 1.0}), now_ms=NOW_MS)
    assert (event.country, event.currency, event.merchant_id, event.features) == ("DE", "EUR", 'm":77', {'x":': 1.0})


def test_limits_are_configurable():
    limits = EventLimits(max_amount=100.0, min_timestamp_ms=0, max_future_ms=0)
    with pytest.raises(InvalidEvent, match="amount: must be <= 100"):
        parse_event(_with(amount=100.5), limits, now_ms=NOW_MS)
    event = parse_event(_with(timestamp="1990-01-01T00:00:00Z", amount=50), limits, now_ms=NOW_MS)
    assert event.timestamp_ms == 631152000000
