"""The transaction event (SPEC: Transaction event) and its validation from raw Kafka bytes.

`parse_event` is the one gate every event passes, in the worker and in offline replay: it returns an `Event`
or raises `InvalidEvent` whose message becomes the dead letter's `error`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

CHANNELS = ("card_present", "ecommerce", "transfer", "atm")
MAX_ID_LENGTH = 64


class InvalidEvent(ValueError):
    """The raw message is not a valid transaction event; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Event:
    transaction_id: str
    account_id: str
    amount: float
    timestamp_ms: int
    currency: str | None = None
    merchant_id: str | None = None
    merchant_category: str | None = None
    country: str | None = None
    ip: str | None = None
    device_id: str | None = None
    channel: str | None = None
    counterparty_id: str | None = None
    account_created_ms: int | None = None
    features: dict[str, float] = field(default_factory=dict)

    @property
    def event_time(self) -> str:
        return format_timestamp(self.timestamp_ms)


def format_timestamp(epoch_ms: int | float) -> str:
    """ISO 8601 UTC with milliseconds and a `Z`, as in the SPEC examples."""
    return datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_timestamp(value: Any, name: str = "timestamp") -> int:
    """ISO 8601 with a zone, or epoch milliseconds, to epoch milliseconds."""
    if isinstance(value, bool):
        raise InvalidEvent(f"{name}: must be ISO 8601 with a zone or epoch milliseconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise InvalidEvent(f"{name}: epoch milliseconds must be finite and >= 0")
        return int(value)
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{name}: must be ISO 8601 with a zone or epoch milliseconds")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"{name}: {value[:40]!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise InvalidEvent(f"{name}: {value[:40]!r} has no time zone (add Z or +00:00)")
    return int(moment.timestamp() * 1000)


def _required_id(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        raise InvalidEvent(f"{name}: required")
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{name}: must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(f"{name}: longer than {MAX_ID_LENGTH} characters")
    return value


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name}: must be a string")
    return value


def event_from_dict(data: Any) -> Event:
    """Validate a decoded JSON value into an `Event`."""
    if not isinstance(data, dict):
        raise InvalidEvent("event: must be a JSON object")
    transaction_id = _required_id(data, "transaction_id")
    account_id = _required_id(data, "account_id")
    amount = data.get("amount")
    if amount is None:
        raise InvalidEvent("amount: required")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise InvalidEvent("amount: must be a number")
    if not math.isfinite(amount):
        raise InvalidEvent("amount: must be finite")
    if amount < 0:
        raise InvalidEvent("amount: must be >= 0")
    if "timestamp" not in data:
        raise InvalidEvent("timestamp: required")
    timestamp_ms = parse_timestamp(data["timestamp"])
    country = _optional_str(data, "country")
    if country is not None and (len(country) != 2 or not country.isalpha()):
        raise InvalidEvent(f"country: {country[:10]!r} is not an ISO 3166-1 alpha-2 code")
    channel = _optional_str(data, "channel")
    if channel is not None and channel not in CHANNELS:
        raise InvalidEvent(f"channel: {channel[:20]!r} is not one of {', '.join(CHANNELS)}")
    created = data.get("account_created_at")
    account_created_ms = None if created is None else parse_timestamp(created, "account_created_at")
    raw_features = data.get("features") or {}
    if not isinstance(raw_features, dict):
        raise InvalidEvent("features: must be an object of numbers")
    features: dict[str, float] = {}
    for key, value in raw_features.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidEvent(f"features.{key}: must be a finite number")
        features[key] = float(value)
    merchant_category = data.get("merchant_category")
    if isinstance(merchant_category, int) and not isinstance(merchant_category, bool):
        merchant_category = str(merchant_category)
    elif merchant_category is not None and not isinstance(merchant_category, str):
        raise InvalidEvent("merchant_category: must be a string")
    return Event(
        transaction_id=transaction_id,
        account_id=account_id,
        amount=float(amount),
        timestamp_ms=timestamp_ms,
        currency=_optional_str(data, "currency"),
        merchant_id=_optional_str(data, "merchant_id"),
        merchant_category=merchant_category,
        country=country.upper() if country else None,
        ip=_optional_str(data, "ip"),
        device_id=_optional_str(data, "device_id"),
        channel=channel,
        counterparty_id=_optional_str(data, "counterparty_id"),
        account_created_ms=account_created_ms,
        features=features,
    )


def parse_event(raw: bytes | str | None, max_bytes: int = 65536) -> Event:
    """Validate raw message bytes into an `Event`, or raise `InvalidEvent` with the reason."""
    if raw is None:
        raise InvalidEvent("message: empty value (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"message: {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = _loads_lenient(raw)  # the standard parser also reads NaN/Infinity, so those get a precise reason
    return event_from_dict(data)


def _loads_lenient(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"message: not JSON ({exc.__class__.__name__}: {str(exc)[:80]})") from None


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON form of an event, as producers send it (inverse of `event_from_dict`)."""
    data: dict[str, Any] = {
        "transaction_id": event.transaction_id,
        "account_id": event.account_id,
        "amount": event.amount,
        "timestamp": event.event_time,
    }
    for name in (
        "currency", "merchant_id", "merchant_category", "country", "ip", "device_id", "channel",
        "counterparty_id",
    ):
        value = getattr(event, name)
        if value is not None:
            data[name] = value
    if event.account_created_ms is not None:
        data["account_created_at"] = format_timestamp(event.account_created_ms)
    if event.features:
        data["features"] = dict(event.features)
    return data
