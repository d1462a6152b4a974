"""Malformed Kafka messages for the chaos (poison message) tests, each breaking exactly one rule of the event contract.

Every message is a valid event (`valid_event`) with one thing broken, so the dead letter's `error` must name that
one thing first (`PoisonMessage.field`). Categories: encoding (bytes that are not UTF-8 JSON text), shape (not one
JSON object, missing fields, NaN/Infinity literals), type (a JSON value of the wrong type), range (a value of the
right type outside its domain or window), size (too long or too many), unicode (lone surrogates, control
characters, non-ASCII letters) and duplicate (duplicate object keys).
"""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

CATEGORIES = ("encoding", "shape", "type", "range", "size", "unicode", "duplicate")
CHANNELS = ("card_present", "ecommerce", "transfer", "atm")
DAY_MS = 86_400_000
MAX_MESSAGE_BYTES = 65_536
BINARY_KEY = bytes((i * 37 + 11) % 256 for i in range(1000))  # not UTF-8: the worker must never decode keys
_KEYS = (b"poison-acc", b"poison-acc", b"poison-acc", None, b"poison-acc", BINARY_KEY, b"poison-acc", b"")


@dataclass(frozen=True)
class PoisonMessage:
    """One malformed message and the field its dead letter's `error` must name first."""

    kind: str  # short unique slug, e.g. "amount-400-digit-int"
    category: str  # one of CATEGORIES
    field: str  # "amount", "features", ... or "message" for whole-message problems
    key: bytes | None
    value: bytes | None
    or_message: bool = False  # a strict JSON parser may refuse it as a whole ("message: ...") before any field


class Record(NamedTuple):
    """A message to produce: `expected` is the poison message it is, or None for a valid event."""

    key: bytes | None
    value: bytes | None
    expected: PoisonMessage | None


def iso(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and a `Z`, the timestamp form producers send."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def valid_event(i: int, now_ms: int) -> dict[str, Any]:
    """A valid event with every optional field set: the traffic around poison messages, and the base they break."""
    return {
        "transaction_id": f"poison-ok-{i}",
        "account_id": f"poison-acc-{i % 16}",
        "amount": round(10 + (i % 97) * 1.25, 2),
        "currency": "EUR",
        "timestamp": iso(now_ms - 60_000),
        "merchant_id": f"m-{i % 50}",
        "merchant_category": "5411",
        "country": "DE",
        "ip": "203.0.113.7",
        "device_id": f"dev-{i % 32}",
        "channel": CHANNELS[i % len(CHANNELS)],
        "counterparty_id": f"cp-{i % 8}",
        "account_created_at": "2020-01-01T00:00:00.000Z",
        "features": {"V1": -1.36, "V2": 0.07, "V3": 2.5},
    }


def names_field(message: PoisonMessage, error: str) -> bool:
    """Whether a dead letter's `error` names what `message` breaks: `<field>:` or `<field>.<name>:` first."""
    fields = (message.field, "message") if message.or_message else (message.field,)
    return any(error.startswith((f"{name}:", f"{name}.")) for name in fields)


def interleave(poison: Sequence[PoisonMessage], valid_count: int = 1, now_ms: int | None = None) -> list[Record]:
    """`valid_count` valid events before, between and after the poison messages, so a test sees the stream go on."""
    if valid_count < 1:
        raise ValueError("valid_count must be at least 1: every poison message sits between valid events")
    now_ms = _now(now_ms)
    records: list[Record] = []
    for message in [*poison, None]:
        for _ in range(valid_count):
            event = valid_event(len(records), now_ms)
            records.append(Record(event["account_id"].encode(), orjson.dumps(event), None))
        if message is not None:
            records.append(Record(message.key, message.value, message))
    return records


def poison_messages(now_ms: int | None = None) -> list[PoisonMessage]:
    """Every poison message, in a fixed order; `now_ms` only places the timestamps that must be recent or ahead."""
    builder = _Builder(_now(now_ms))
    _encoding(builder)
    _shape(builder)
    _types(builder)
    _ranges(builder)
    _sizes(builder)
    _unicode(builder)
    _duplicates(builder)
    return builder.messages


def _now(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms


def _json(pairs: list[tuple[str, bytes]]) -> bytes:
    """A JSON object from (name, raw JSON value) pairs, so values and duplicates can be any bytes."""
    return b"{" + b",".join(orjson.dumps(name) + b":" + raw for name, raw in pairs) + b"}"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class _Builder:
    """Collects poison messages, each the same valid base event with one change."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.messages: list[PoisonMessage] = []

    def pairs(self, kind: str) -> list[tuple[str, bytes]]:
        """The base event for `kind` (its transaction id names the kind) as (name, raw JSON value) pairs."""
        event = {**valid_event(0, self.now_ms), "transaction_id": f"poison-{kind}"[:64], "account_id": "poison-acc"}
        return [(name, orjson.dumps(value)) for name, value in event.items()]

    def base(self, kind: str) -> bytes:
        return _json(self.pairs(kind))

    def add(self, kind: str, category: str, field: str, value: bytes | None, *, or_message: bool = False) -> None:
        key = _KEYS[len(self.messages) % len(_KEYS)]
        self.messages.append(PoisonMessage(kind, category, field, key, value, or_message))

    def raw(self, kind: str, category: str, name: str, raw: bytes, *, field: str | None = None,
            or_message: bool = False) -> None:
        """The base event with top-level `name` set to raw JSON text (added if absent); `field` defaults to `name`."""
        pairs = [pair for pair in self.pairs(kind) if pair[0] != name]
        pairs.append((name, raw))
        self.add(kind, category, field or name, _json(pairs), or_message=or_message)

    def set(self, kind: str, category: str, name: str, value: Any) -> None:
        self.raw(kind, category, name, orjson.dumps(value))

    def without(self, kind: str, name: str) -> None:
        self.add(kind, "shape", name, _json([pair for pair in self.pairs(kind) if pair[0] != name]))

    def duplicate(self, kind: str, name: str, raw: bytes) -> None:
        """The base event with a second `name` (raw JSON text) right after the first, or twice if it is new."""
        pairs = self.pairs(kind)
        names = [pair[0] for pair in pairs]
        at = names.index(name) + 1 if name in names else len(pairs)
        pairs[at:at] = [(name, raw)] if name in names else [(name, raw), (name, raw)]
        self.add(kind, "duplicate", name, _json(pairs), or_message=True)


def _encoding(b: _Builder) -> None:
    """Bytes that are not UTF-8 JSON text: a whole-message problem (a raw NUL in a string may name its field)."""
    for kind, name, text in [
        ("invalid-utf8-byte-ff", "transaction_id", b"poison-\xff-id"),
        ("utf8-lone-continuation-byte", "merchant_id", b"m-\x80-77"),
        ("utf8-truncated-sequence", "account_id", b"acc-\xe2\x82"),
        ("latin1-byte-in-string", "merchant_id", "Caf\u00e9 M\u00fcnchen".encode("latin-1")),
        ("overlong-utf8-slash", "transaction_id", b"poison-\xc0\xaf-id"),
        ("overlong-utf8-nul", "transaction_id", b"poison-\xc0\x80-id"),
        ("cesu8-lone-surrogate", "transaction_id", b"poison-\xed\xa0\x80-id"),
        ("cesu8-surrogate-pair", "device_id", b"dev-\xed\xa0\xbd\xed\xb8\x80"),
        ("utf8-above-u10ffff", "device_id", b"dev-\xf4\x90\x80\x80"),
        ("utf8-five-byte-sequence", "counterparty_id", b"cp-\xf8\x88\x80\x80\x80"),
    ]:
        b.raw(kind, "encoding", name, b'"' + text + b'"', field="message")
    # JSON forbids raw control characters in strings: the field may be named, or the message refused as not JSON
    b.raw("raw-nul-byte-in-string", "encoding", "transaction_id", b'"poison-\x00-id"', or_message=True)
    b.add("utf8-bom", "encoding", "message", b"\xef\xbb\xbf" + b.base("utf8-bom"))
    b.add("utf16-le", "encoding", "message", b.base("utf16-le").decode().encode("utf-16-le"))
    b.add("utf16-be", "encoding", "message", b.base("utf16-be").decode().encode("utf-16-be"))
    utf16 = b.base("utf16-le-with-bom").decode().encode("utf-16-le")
    b.add("utf16-le-with-bom", "encoding", "message", b"\xff\xfe" + utf16)
    b.add("utf32-le", "encoding", "message", b.base("utf32-le").decode().encode("utf-32-le"))
    b.add("ebcdic-cp500", "encoding", "message", b.base("ebcdic-cp500").decode().encode("cp500"))
    b.add("nul-byte-after-object", "encoding", "message", b.base("nul-byte-after-object") + b"\x00")
    b.add("nul-byte-before-object", "encoding", "message", b"\x00" + b.base("nul-byte-before-object"))
    b.add("gzip-compressed-json", "encoding", "message", gzip.compress(b.base("gzip-compressed-json"), mtime=0))
    b.add("base64-encoded-json", "encoding", "message", base64.b64encode(b.base("base64-encoded-json")))
    b.add("empty-value", "encoding", "message", b"")
    b.add("tombstone", "encoding", "message", None)


def _shape(b: _Builder) -> None:
    """Not exactly one JSON object, a required field missing, or a NaN/Infinity literal."""
    for kind, value in [
        ("not-json", b"this is not json"),
        ("whitespace-only", b" \n\t "),
        ("json-array-of-event", b"[" + b.base("json-array-of-event") + b"]"),
        ("json-string-of-event", orjson.dumps(b.base("json-string-of-event").decode())),
        ("json-number", b"42"),
        ("json-null", b"null"),
        ("json-true", b"true"),
        ("json-false", b"false"),
        ("nested-arrays-5000", _nested(5000)),
        ("nested-objects-5000", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    ]:
        b.add(kind, "shape", "message", value)
    event = b.base("truncated-half")
    b.add("truncated-half", "shape", "message", event[: len(event) // 2])
    b.add("truncated-last-brace", "shape", "message", b.base("truncated-last-brace")[:-1])
    b.add("trailing-data", "shape", "message", b.base("trailing-data") + b" trailing")
    b.add("two-objects", "shape", "message", b.base("two-objects") + b.base("two-objects"))
    b.add("two-json-lines", "shape", "message", b.base("two-json-lines") + b"\n" + b.base("two-json-lines"))
    b.add("trailing-comma", "shape", "message", b.base("trailing-comma")[:-1] + b",}")
    b.add("leading-comment", "shape", "message", b"/* event */" + b.base("leading-comment"))
    single_quoted = repr(orjson.loads(b.base("single-quoted-python-repr"))).encode()
    b.add("single-quoted-python-repr", "shape", "message", single_quoted)
    unquoted = b"{" + b",".join(name.encode() + b":" + raw for name, raw in b.pairs("unquoted-keys")) + b"}"
    b.add("unquoted-keys", "shape", "message", unquoted)
    b.raw("nested-5000-in-unknown-field", "shape", "extra", _nested(5000), field="message")
    for name in ("transaction_id", "account_id", "amount", "timestamp"):
        b.without(f"missing-{name.replace('_', '-')}", name)
    for kind, name, raw in [
        ("amount-nan-literal", "amount", b"NaN"),
        ("amount-infinity-literal", "amount", b"Infinity"),
        ("amount-minus-infinity-literal", "amount", b"-Infinity"),
        ("timestamp-nan-literal", "timestamp", b"NaN"),
        ("feature-nan-literal", "features", b'{"V1":NaN,"V2":0.07}'),
        ("feature-infinity-literal", "features", b'{"V1":Infinity,"V2":0.07}'),
    ]:
        b.raw(kind, "shape", name, raw, or_message=True)


def _types(b: _Builder) -> None:
    """A JSON value of the wrong type."""
    for kind, name, value in [
        ("amount-string", "amount", "42.50"),
        ("amount-string-nan", "amount", "NaN"),
        ("amount-bool", "amount", True),
        ("amount-null", "amount", None),
        ("amount-object", "amount", {"value": 42.5, "currency": "EUR"}),
        ("amount-array", "amount", [42.5]),
        ("transaction-id-number", "transaction_id", 12345),
        ("transaction-id-float", "transaction_id", 1.5),
        ("transaction-id-object", "transaction_id", {"id": "tx-1"}),
        ("transaction-id-array", "transaction_id", ["tx-1"]),
        ("transaction-id-bool", "transaction_id", True),
        ("transaction-id-null", "transaction_id", None),
        ("transaction-id-empty", "transaction_id", ""),
        ("account-id-number", "account_id", 42),
        ("account-id-object", "account_id", {"id": "acc-42"}),
        ("account-id-empty", "account_id", ""),
        ("merchant-id-number", "merchant_id", 77),
        ("merchant-id-empty", "merchant_id", ""),
        ("device-id-number", "device_id", 9),
        ("device-id-empty", "device_id", ""),
        ("counterparty-id-array", "counterparty_id", ["acc-99"]),
        ("counterparty-id-empty", "counterparty_id", ""),
        ("timestamp-bool", "timestamp", True),
        ("timestamp-object", "timestamp", {"iso": "2024-01-01T00:00:00Z"}),
        ("timestamp-array", "timestamp", [2024, 1, 1]),
        ("timestamp-empty", "timestamp", ""),
        ("timestamp-null", "timestamp", None),
        ("features-empty-array", "features", []),
        ("features-list-of-pairs", "features", [["V1", -1.36]]),
        ("features-string", "features", "V1=-1.36"),
        ("features-zero", "features", 0),
        ("features-bool", "features", True),
        ("feature-value-string", "features", {"V1": "-1.36"}),
        ("feature-value-bool", "features", {"V1": True}),
        ("feature-value-null", "features", {"V1": None}),
        ("feature-value-object", "features", {"V1": {"x": 1}}),
        ("feature-value-array", "features", {"V1": [1.0]}),
        ("ip-number", "ip", 3405803783),
        ("merchant-category-bool", "merchant_category", True),
        ("merchant-category-float", "merchant_category", 5411.5),
        ("merchant-category-object", "merchant_category", {"mcc": 5411}),
        ("currency-number", "currency", 978),
        ("country-number", "country", 49),
        ("channel-number", "channel", 1),
        ("channel-array", "channel", ["atm"]),
        ("account-created-at-bool", "account_created_at", False),
        ("account-created-at-object", "account_created_at", {}),
    ]:
        b.set(kind, "type", name, value)


def _ranges(b: _Builder) -> None:
    """A value of the right type outside its domain: amounts, timestamps, features, codes and enumerations."""
    digits400 = b"9" * 400
    ahead = b.now_ms + 2 * DAY_MS
    for kind, name, raw in [
        ("amount-negative", "amount", b"-1"),
        ("amount-tiny-negative", "amount", b"-0.0001"),
        ("amount-just-above-1e12", "amount", b"1000000000000.01"),
        ("amount-1e13-int", "amount", b"10000000000000"),
        ("amount-21-digit-int", "amount", b"100000000000000000000"),
        ("amount-1e308", "amount", b"1e308"),
        ("amount-1e400-literal", "amount", b"1e400"),
        ("amount-400-digit-int", "amount", digits400),
        ("amount-negative-400-digit-int", "amount", b"-" + digits400),
        ("amount-5000-digit-int", "amount", b"1" + b"0" * 4999),
        ("timestamp-epoch-1e15", "timestamp", b"1000000000000000"),
        ("timestamp-epoch-1e19", "timestamp", b"10000000000000000000"),
        ("timestamp-epoch-1e300", "timestamp", b"1e300"),
        ("timestamp-epoch-1e400-literal", "timestamp", b"1e400"),
        ("timestamp-epoch-400-digit-int", "timestamp", digits400),
        ("timestamp-epoch-negative", "timestamp", b"-1"),
        ("timestamp-epoch-zero", "timestamp", b"0"),
        ("timestamp-epoch-before-2000", "timestamp", b"946684799999"),
        ("timestamp-epoch-two-days-ahead", "timestamp", str(ahead).encode()),
        ("account-created-epoch-negative", "account_created_at", b"-1"),
        ("account-created-epoch-two-days-ahead", "account_created_at", str(ahead).encode()),
        ("feature-1e308", "features", b'{"V1":1e308,"V2":0.07}'),
        ("feature-400-digit-int", "features", b'{"V1":' + digits400 + b',"V2":0.07}'),
        ("feature-above-1e12", "features", b'{"V1":-10000000000000.0,"V2":0.07}'),
        ("merchant-category-10000", "merchant_category", b"10000"),
        ("merchant-category-negative", "merchant_category", b"-1"),
    ]:
        b.raw(kind, "range", name, raw)
    for kind, name, value in [
        ("timestamp-iso-year-9999-minus-14h", "timestamp", "9999-12-31T23:59:59-14:00"),
        ("timestamp-iso-year-1-plus-14h", "timestamp", "0001-01-01T00:00:00+14:00"),
        ("timestamp-iso-1999", "timestamp", "1999-12-31T23:59:59.999Z"),
        ("timestamp-iso-two-days-ahead", "timestamp", iso(ahead)),
        ("timestamp-iso-no-zone", "timestamp", iso(b.now_ms - 60_000)[:-1]),
        ("timestamp-iso-date-only", "timestamp", "2024-05-01"),
        ("timestamp-garbage", "timestamp", "yesterday at noon"),
        ("timestamp-impossible-date", "timestamp", "2024-02-30T10:00:00Z"),
        ("timestamp-offset-24h", "timestamp", "2024-01-01T00:00:00+24:00"),
        ("timestamp-epoch-as-string", "timestamp", "1700000000000"),
        ("account-created-before-1970", "account_created_at", "1969-12-31T23:59:59Z"),
        ("account-created-iso-two-days-ahead", "account_created_at", iso(ahead)),
        ("account-created-garbage", "account_created_at", "long ago"),
        ("account-created-no-zone", "account_created_at", "2020-01-01T00:00:00"),
        ("country-alpha3", "country", "DEU"),
        ("country-letter-digit", "country", "D1"),
        ("country-digit", "country", "1"),
        ("country-empty", "country", ""),
        ("currency-four-letters", "currency", "EURO"),
        ("currency-two-letters", "currency", "EU"),
        ("currency-with-digit", "currency", "E1R"),
        ("currency-empty", "currency", ""),
        ("channel-unknown", "channel", "telepathy"),
        ("channel-empty", "channel", ""),
        ("channel-space-for-underscore", "channel", "card present"),
    ]:
        b.set(kind, "range", name, value)


def _sizes(b: _Builder) -> None:
    """Too many bytes, characters or entries."""
    pairs = b.pairs("message-70000-bytes") + [("padding", orjson.dumps("x" * 70_000))]
    b.add("message-70000-bytes", "size", "message", _json(pairs))
    event = b.base("message-65537-bytes")
    filler = MAX_MESSAGE_BYTES + 1 - len(event) - len(b',"padding":""')
    b.add("message-65537-bytes", "size", "message", event[:-1] + b',"padding":"' + b"x" * filler + b'"}')
    b.add("message-70000-leading-spaces", "size", "message", b" " * 70_000 + b.base("message-70000-leading-spaces"))
    b.add("binary-900kb", "size", "message", bytes((i * 131 + 7) % 256 for i in range(900_000)))
    b.add("control-chars-300kb", "size", "message", bytes(i % 32 for i in range(300_000)))
    for kind, name, value in [
        ("transaction-id-65", "transaction_id", "t" * 65),
        ("transaction-id-10000", "transaction_id", "t" * 10_000),
        ("account-id-65", "account_id", "a" * 65),
        ("account-id-300", "account_id", "a" * 300),
        ("merchant-id-65", "merchant_id", "m" * 65),
        ("device-id-65", "device_id", "d" * 65),
        ("counterparty-id-65", "counterparty_id", "c" * 65),
        ("ip-65", "ip", "1" * 65),
        ("ip-300", "ip", "203.0.113.7/" * 25),
        ("merchant-category-17", "merchant_category", "5" * 17),
        ("merchant-category-300", "merchant_category", "groceries " * 30),
        ("currency-300", "currency", "EUR" * 100),
        ("country-300", "country", "DE" * 150),
        ("channel-300", "channel", "ecommerce" * 33 + "eco"),
        ("timestamp-300-digit-string", "timestamp", "9" * 300),
        ("account-created-300-chars", "account_created_at", "2020-01-01T00:00:00Z" * 15),
        ("features-257-entries", "features", {f"F{i}": float(i) for i in range(257)}),
        ("features-300-entries", "features", {f"F{i}": float(i) for i in range(300)}),
        ("feature-name-65", "features", {"V" * 65: 1.0}),
        ("feature-name-200", "features", {"V" * 200: 1.0}),
        ("feature-name-empty", "features", {"": 1.0}),
    ]:
        b.set(kind, "size", name, value)


def _unicode(b: _Builder) -> None:
    """Lone surrogates, control characters (escaped and raw) and letters outside ASCII."""
    for kind, name, raw in [
        ("transaction-id-lone-high-surrogate", "transaction_id", rb'"poison-\ud800"'),
        ("transaction-id-lone-low-surrogate", "transaction_id", rb'"poison-\udc00"'),
        ("transaction-id-reversed-surrogates", "transaction_id", rb'"poison-\udc00\ud800"'),
        ("transaction-id-high-surrogate-then-letter", "transaction_id", rb'"poison-\ud83dx"'),
        ("account-id-lone-high-surrogate", "account_id", rb'"acc-\ud800"'),
        ("account-id-lone-low-surrogate", "account_id", rb'"acc-\udc00"'),
        ("merchant-id-lone-high-surrogate", "merchant_id", rb'"m-\ud800"'),
        ("merchant-id-lone-low-surrogate", "merchant_id", rb'"m-\udc00"'),
        ("device-id-lone-surrogate", "device_id", rb'"dev-\udbff"'),
        ("counterparty-id-lone-surrogate", "counterparty_id", rb'"cp-\udfff"'),
        ("transaction-id-escaped-nul", "transaction_id", rb'"poison-\u0000-id"'),
        ("transaction-id-escaped-bel", "transaction_id", rb'"poison-\u0007-id"'),
        ("account-id-escaped-esc", "account_id", rb'"acc-\u001b[31m"'),
        ("account-id-escaped-del", "account_id", rb'"acc-\u007f"'),
        ("merchant-id-escaped-nel", "merchant_id", rb'"m-\u0085-77"'),
        ("merchant-id-escaped-nul", "merchant_id", rb'"m-\u0000"'),
        ("device-id-escaped-csi", "device_id", rb'"dev-\u009b"'),
        ("counterparty-id-escaped-newline", "counterparty_id", rb'"cp-\n-1"'),
        ("ip-escaped-nul", "ip", rb'"203.0.113.7\u0000"'),
        ("country-escaped-nul", "country", rb'"D\u0000"'),
    ]:
        b.raw(kind, "unicode", name, raw)
    for kind, name, text in [  # raw bytes: DEL and NEL are allowed unescaped by JSON, the others are not
        ("transaction-id-raw-del", "transaction_id", b"poison-\x7f-id"),
        ("account-id-raw-nel", "account_id", b"acc-\xc2\x85"),
        ("transaction-id-raw-newline", "transaction_id", b"poison-\n-id"),
        ("transaction-id-raw-tab", "transaction_id", b"poison-\t-id"),
        ("account-id-raw-esc", "account_id", b"acc-\x1b[31m"),
        ("merchant-id-raw-bel", "merchant_id", b"m-\x07"),
    ]:
        b.raw(kind, "unicode", name, b'"' + text + b'"', or_message=min(text) < 0x20)
    for kind, name, value in [
        ("country-non-ascii-letters", "country", "\u00c4\u00d6"),
        ("country-fullwidth-letters", "country", "\uff24\uff25"),
        ("currency-euro-sign", "currency", "\u20ac"),
        ("currency-non-ascii-letters", "currency", "\u00c4\u00d6\u00dc"),
        ("channel-cyrillic-lookalike", "channel", "ecommer\u0441e"),
    ]:
        b.set(kind, "unicode", name, value)


def _duplicates(b: _Builder) -> None:
    """Duplicate keys, at the top level and inside objects: which value counts is ambiguous, so both are refused."""
    b.duplicate("duplicate-amount-two-values", "amount", b"43.5")
    b.duplicate("duplicate-amount-same-value", "amount", orjson.dumps(valid_event(0, b.now_ms)["amount"]))
    b.duplicate("duplicate-transaction-id", "transaction_id", b'"poison-duplicate-transaction-id-2"')
    b.duplicate("duplicate-account-id", "account_id", b'"poison-acc-2"')
    b.duplicate("duplicate-timestamp", "timestamp", orjson.dumps(iso(b.now_ms - 120_000)))
    b.duplicate("duplicate-country", "country", b'"FR"')
    b.duplicate("duplicate-unknown-field", "note", b'"seen twice"')
    b.raw("duplicate-feature-name", "duplicate", "features", b'{"V1":-1.36,"V2":0.07,"V1":0.5}', or_message=True)
    b.raw("duplicate-key-in-unknown-object", "duplicate", "meta", b'{"source":"a","source":"b"}', or_message=True)
