"""The transaction event (contract: docs/contracts.md) and its validation from raw Kafka bytes.

`parse_event` is the one gate every event passes, in the worker and in offline replay: it returns an `Event`
or raises `InvalidEvent` whose message, `<field>: <reason>`, becomes the dead letter's `error`. Nothing that
passes can make features, rule state or the JSON output fail: ids are printable Unicode of bounded length,
numbers are finite and bounded, timestamps lie in a window around now.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from fraudmon.core.errors import InvalidEvent

CHANNELS = ("card_present", "ecommerce", "transfer", "atm")
MAX_ID_LENGTH = 64
ID_FIELDS = ("merchant_id", "device_id", "counterparty_id")
MIN_ACCOUNT_CREATED_MS = 0  # 1970-01-01: accounts can be older than the event window
MAX_ISO_LENGTH = 40
MAX_MERCHANT_CATEGORY_LENGTH = 16
MAX_IP_LENGTH = 64
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last time ISO 8601 can write


@dataclass(frozen=True, slots=True)
class EventLimits:
    """What the gate accepts; the worker's `events:` settings (config/monitor.yaml)."""

    max_message_bytes: int = 65536
    max_amount: float = 1e12
    min_timestamp_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z
    max_future_ms: int | None = 86_400_000  # up to a day ahead of the clock; None: no bound (files, backtests)
    max_features: int = 256
    max_feature_abs: float = 1e12


DEFAULT_LIMITS = EventLimits()
FILE_LIMITS = EventLimits(max_message_bytes=1 << 20, min_timestamp_ms=0, max_future_ms=None)
"""For events read from files (training, backtests): recorded or simulated time need not be near now."""


@dataclass(slots=True)
class Event:
    """One validated transaction. Treated as immutable; not frozen, because a frozen dataclass' `__init__` costs
    eight times as much (1.3 against 0.17 µs), once per event the worker decides."""

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


EPOCH, MILLISECOND = datetime(1970, 1, 1, tzinfo=UTC), timedelta(milliseconds=1)
SECONDS_CACHE = 4096  # seconds remembered by each of the two caches below (then they start again)
_SECOND_TEXT: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS" (UTC)
_TEXT_SECOND: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch second (UTC)


def format_timestamp(epoch_ms: int | float) -> str:
    """ISO 8601 UTC with milliseconds and a `Z`, as in the contract's examples. Whole milliseconds take a
    remembered second's text (events of a batch share their seconds; datetime costs 1.5 µs a call)."""
    if type(epoch_ms) is int and epoch_ms >= 0:
        second, ms = divmod(epoch_ms, 1000)
        text = _SECOND_TEXT.get(second)
        if text is None:
            if len(_SECOND_TEXT) >= SECONDS_CACHE:
                _SECOND_TEXT.clear()
            text = _SECOND_TEXT[second] = datetime.fromtimestamp(second, tz=UTC).isoformat()[:19]
        return f"{text}.{ms:03d}Z"
    return datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _contract_form(value: str) -> bool:
    """`value` looks like this contract's own timestamps (`2026-01-05T10:00:00.123Z`): its first 19 characters
    name the second, its milliseconds are three ASCII digits."""
    return (len(value) == 24 and value[23] == "Z" and value[19] == "." and value[4] == "-" and value[7] == "-"
            and value[10] == "T" and value[13] == ":" and value[16] == ":" and value[20:23].isascii()
            and value[20:23].isdigit())


def _shown(value: Any, limit: int = 40) -> str:
    """A bounded, escaped rendering of user input for error messages (never a control character)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_iso(value: str, name: str) -> int | float:
    """ISO 8601 with a zone to whole epoch milliseconds (floored, exactly: the float of `datetime.timestamp()`
    times 1,000 fell a millisecond short for about one timestamp in 170); +-inf outside datetime's range."""
    if not value or len(value) > MAX_ISO_LENGTH:
        raise InvalidEvent(f"{name}: must be ISO 8601 with a zone or epoch milliseconds")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"{name}: {_shown(value)} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise InvalidEvent(f"{name}: {_shown(value)} has no time zone (add Z or +00:00)")
    try:
        return (moment - EPOCH) // MILLISECOND
    except OverflowError:
        return math.inf if moment.year > 2000 else -math.inf


def parse_timestamp(value: Any, name: str = "timestamp", low_ms: int | None = None,
                    high_ms: int | None = None) -> int:
    """ISO 8601 with a zone, or epoch milliseconds, to epoch milliseconds within [low_ms, high_ms]."""
    low_ms = DEFAULT_LIMITS.min_timestamp_ms if low_ms is None else low_ms
    high_ms = int(time.time() * 1000) + DEFAULT_LIMITS.max_future_ms if high_ms is None else high_ms
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidEvent(f"{name}: must be ISO 8601 with a zone or epoch milliseconds")
    if isinstance(value, str):
        contract_form = _contract_form(value)
        second = _TEXT_SECOND.get(value[:19]) if contract_form else None
        if second is not None:  # a second parsed before: only the milliseconds are new
            epoch_ms = second * 1000 + int(value[20:23])
        else:
            epoch_ms = _parse_iso(value, name)
            if contract_form and isinstance(epoch_ms, int):
                if len(_TEXT_SECOND) >= SECONDS_CACHE:
                    _TEXT_SECOND.clear()
                _TEXT_SECOND[value[:19]] = epoch_ms // 1000
    else:
        epoch_ms = value
        if not math.isfinite(epoch_ms):
            raise InvalidEvent(f"{name}: epoch milliseconds must be finite")
    if not low_ms <= epoch_ms <= high_ms:
        shown = _shown(value) if isinstance(value, str) else _shown(value, 24)
        raise InvalidEvent(f"{name}: {shown} is outside {format_timestamp(low_ms)} .. {format_timestamp(high_ms)}")
    return int(epoch_ms)


def _id(data: dict[str, Any], name: str, required: bool) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidEvent(f"{name}: required")
        return None
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{name}: must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(f"{name}: longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():  # control characters, lone surrogates, format characters
        raise InvalidEvent(f"{name}: {_shown(value)} holds control or unprintable characters")
    return value


def _short_text(data: dict[str, Any], name: str, max_length: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name}: must be a string")
    if len(value) > max_length:
        raise InvalidEvent(f"{name}: longer than {max_length} characters")
    if not value.isprintable():
        raise InvalidEvent(f"{name}: {_shown(value)} holds control or unprintable characters")
    return value


def _letters(data: dict[str, Any], name: str, length: int, what: str) -> str | None:
    """`length` ASCII letters (either case), upper-cased."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != length or not (value.isascii() and value.isalpha()):
        raise InvalidEvent(f"{name}: {_shown(value, 20)} is not {what}")
    return value.upper()


def _number(value: Any, name: str, low: float, high: float) -> float:
    """A JSON number (not a bool) in [low, high]; integers of any length are compared exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{name}: must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEvent(f"{name}: must be finite")
    if value < low:
        raise InvalidEvent(f"{name}: must be >= {low:g}")
    if value > high:
        raise InvalidEvent(f"{name}: must be <= {high:g}")
    return float(value)


def _merchant_category(data: dict[str, Any]) -> str | None:
    value = data.get("merchant_category")
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 9999:
            raise InvalidEvent("merchant_category: a number must be a code from 0 to 9999")
        return str(value)
    return _short_text(data, "merchant_category", MAX_MERCHANT_CATEGORY_LENGTH)


def _features(data: dict[str, Any], limits: EventLimits) -> dict[str, float]:
    raw = data.get("features")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidEvent("features: must be an object of numbers")
    if len(raw) > limits.max_features:
        raise InvalidEvent(f"features: {len(raw)} entries, more than {limits.max_features}")
    features: dict[str, float] = {}
    bound = limits.max_feature_abs
    for key, value in raw.items():
        if not key or len(key) > MAX_ID_LENGTH or not key.isprintable():
            raise InvalidEvent(f"features: name {_shown(key)} must be 1..{MAX_ID_LENGTH} printable characters")
        features[key] = _number(value, f"features.{key}", -bound, bound)
    return features


def event_from_dict(data: Any, limits: EventLimits = DEFAULT_LIMITS, now_ms: int | None = None) -> Event:
    """Validate a decoded JSON value into an `Event` (`now_ms` anchors the timestamp window)."""
    if not isinstance(data, dict):
        raise InvalidEvent("message: must be a JSON object")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    transaction_id = _id(data, "transaction_id", required=True)
    account_id = _id(data, "account_id", required=True)
    if data.get("amount") is None:
        raise InvalidEvent("amount: required")
    amount = _number(data["amount"], "amount", 0.0, limits.max_amount)
    if "timestamp" not in data:
        raise InvalidEvent("timestamp: required")
    latest_ms = MAX_TIMESTAMP_MS if limits.max_future_ms is None else now_ms + limits.max_future_ms
    timestamp_ms = parse_timestamp(data["timestamp"], "timestamp", limits.min_timestamp_ms, latest_ms)
    get = data.get  # the optional fields: checked only when present, in the order of the checks' messages
    channel = get("channel")
    if channel is not None and channel not in CHANNELS:
        raise InvalidEvent(f"channel: {_shown(channel, 20)} is not one of {', '.join(CHANNELS)}")
    created = get("account_created_at")
    account_created_ms = None if created is None else parse_timestamp(
        created, "account_created_at", MIN_ACCOUNT_CREATED_MS, latest_ms)
    merchant_id = None if get("merchant_id") is None else _id(data, "merchant_id", required=False)
    device_id = None if get("device_id") is None else _id(data, "device_id", required=False)
    counterparty_id = None if get("counterparty_id") is None else _id(data, "counterparty_id", required=False)
    currency = get("currency")
    if currency is not None:
        currency = _letters(data, "currency", 3, "an ISO 4217 code of three letters")
    merchant_category = None if get("merchant_category") is None else _merchant_category(data)
    country = get("country")
    if country is not None:
        country = _letters(data, "country", 2, "an ISO 3166-1 alpha-2 code")
    ip = None if get("ip") is None else _short_text(data, "ip", MAX_IP_LENGTH)
    return Event(
        transaction_id, account_id, amount, timestamp_ms, currency, merchant_id, merchant_category, country, ip,
        device_id, channel, counterparty_id, account_created_ms,
        {} if get("features") is None else _features(data, limits),
    )


def parse_event(raw: bytes | str | None, limits: EventLimits = DEFAULT_LIMITS, now_ms: int | None = None) -> Event:
    """Validate raw message bytes into an `Event`, or raise `InvalidEvent` with the reason."""
    return event_from_dict(decode_object(raw, limits.max_message_bytes), limits, now_ms)


def decode_object(raw: bytes | str | None, max_bytes: int) -> dict[str, Any]:
    """One strict UTF-8 JSON object (no BOM, NaN, trailing data, lone surrogates or duplicate keys) of at most
    `max_bytes`, or `InvalidEvent` naming what is wrong."""
    if raw is None:
        raise InvalidEvent("message: empty value (tombstone)")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not raw:
        raise InvalidEvent("message: empty value")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"message: {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(_why_not_json(raw, exc)) from None
    if not isinstance(data, dict):
        raise InvalidEvent("message: must be a JSON object")
    if _key_tokens(raw) != _count_keys(data):  # more key tokens than keys: maybe a duplicate
        problem = _inspect(raw.decode("utf-8"), duplicates_only=True)
        if problem:
            raise InvalidEvent(problem)
    return data


VERDICT_LABELS = ("fraud", "legit")
MAX_VERDICT_BYTES = 8192
MAX_NOTE_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an analyst concluded about a transaction (topic `transaction-verdicts`)."""

    transaction_id: str
    label: str  # fraud or legit
    reviewer: str | None = None
    reviewed_at_ms: int | None = None
    note: str | None = None


def parse_verdict(raw: bytes | str | None, now_ms: int | None = None) -> Verdict:
    """Validate a verdict message, or raise `InvalidEvent` naming the field."""
    data = decode_object(raw, MAX_VERDICT_BYTES)
    transaction_id = _id(data, "transaction_id", required=True)
    label = data.get("label")
    if label not in VERDICT_LABELS:
        raise InvalidEvent(f"label: {_shown(label, 20)} is not one of {', '.join(VERDICT_LABELS)}")
    reviewed = data.get("reviewed_at")
    latest_ms = (int(time.time() * 1000) if now_ms is None else now_ms) + DEFAULT_LIMITS.max_future_ms
    return Verdict(
        transaction_id=transaction_id, label=label, reviewer=_id(data, "reviewer", required=False),
        reviewed_at_ms=None if reviewed is None else parse_timestamp(reviewed, "reviewed_at",
                                                                      MIN_ACCOUNT_CREATED_MS, latest_ms),
        note=_short_text(data, "note", MAX_NOTE_LENGTH),
    )


def verdict_to_dict(verdict: Verdict) -> dict[str, Any]:
    """The JSON form of a verdict (inverse of `parse_verdict`)."""
    data: dict[str, Any] = {"transaction_id": verdict.transaction_id, "label": verdict.label}
    if verdict.reviewer is not None:
        data["reviewer"] = verdict.reviewer
    if verdict.reviewed_at_ms is not None:
        data["reviewed_at"] = format_timestamp(verdict.reviewed_at_ms)
    if verdict.note is not None:
        data["note"] = verdict.note
    return data


# ---- the slow path: saying precisely what is wrong with a message the strict parser refused ------------------
# Every key token ends in `"` then optional white space then `:`, so the regex finds at least as many matches as
# there are keys; as many matches as distinct keys proves there is no duplicate without a second parse.
_KEY_TOKEN = re.compile(rb'"\s*:')
_REGEX_WHITE_SPACE = b" \t\n\r\f\v"  # what `\s` matches in a bytes pattern
_DUPLICATE = object()  # marks a decoded object that had a duplicate key, with that key as value
_MAX_INT_DIGITS = 300


class _Bad:
    """A value the strict parser refused (NaN, an integer too long, a number out of range)."""

    def __init__(self, why: str) -> None:
        self.why = why


def _key_tokens(raw: bytes) -> int:
    """How many times `_KEY_TOKEN` matches `raw`, counted as `":` once the white space it allows is deleted
    (each match becomes exactly one `":`, and no other `":` appears): about a third of the regex's time."""
    return raw.translate(None, _REGEX_WHITE_SPACE).count(b'":')


def _count_keys(value: Any) -> int:
    if value.__class__ is dict:  # the usual event: an object of scalars, maybe one nested object (`features`)
        count = len(value)
        for item in value.values():
            cls = item.__class__
            if cls is dict:
                count += _count_keys(item)
            elif cls is list:
                return _count_nested_keys(value)
        return count
    return _count_nested_keys(value)


def _count_nested_keys(value: Any) -> int:
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return count


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result and _DUPLICATE not in result:
            result[_DUPLICATE] = key
        result[key] = value
    return result


def _integer(text: str) -> int | _Bad:
    digits = len(text.lstrip("-"))
    return _Bad(f"an integer of {digits} digits is out of range") if digits > _MAX_INT_DIGITS else int(text)


def _float(text: str) -> float | _Bad:
    value = float(text)
    return value if math.isfinite(value) else _Bad(f"{text[:20]} is out of range")


def _problem_in(value: Any, path: str, duplicates_only: bool = False) -> str | None:
    """The first refused value, duplicate key or unprintable string below `value`, as `path: reason`."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        name = where or "message"
        if isinstance(item, _Bad):
            return f"{name}: {item.why}"
        if isinstance(item, str) and not duplicates_only:
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{name}: holds a lone UTF-16 surrogate"
            if any(ord(c) < 0x20 for c in item):
                return f"{name}: holds a raw control character (escape it as \\u00XX)"
        elif isinstance(item, dict):
            if _DUPLICATE in item:
                return f"{_join(where, item[_DUPLICATE])}: duplicate key"
            for key in item:
                problem = _problem_in(key, f"{_join(where, key)!r} key", duplicates_only)
                if problem:
                    return problem
            stack.extend(reversed([(v, _join(where, k)) for k, v in item.items()]))
        elif isinstance(item, list):
            stack.extend(reversed([(v, f"{name}[{i}]") for i, v in enumerate(item)]))
    return None


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _inspect(text: str, duplicates_only: bool = False) -> str | None:
    try:
        decoded = json.loads(text, object_pairs_hook=_pairs, parse_int=_integer, parse_float=_float,
                             parse_constant=lambda name: _Bad(f"{name} is not a JSON number"), strict=False)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return None
    return _problem_in(decoded, "", duplicates_only)


def _why_not_json(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        return "message: starts with a byte order mark (BOM); send UTF-8 without one"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"message: not UTF-8 (byte 0x{raw[bad.start]:02x} at {bad.start}); send JSON in UTF-8"
    problem = _inspect(text)
    if problem:
        return problem
    return f"message: not valid JSON ({str(exc)[:100]})"


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
