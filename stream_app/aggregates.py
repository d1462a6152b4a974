"""Declared aggregates (the rules file's `aggregates:`): what state to keep per entity, read by rules as `agg.<name>`.

Each aggregate counts or summarises the earlier events of one entity (the events sharing the value of its `by`
field) over a sliding window of event time or over a history that expires `ttl` after the entity's last event.
Its value is the one *before* the event; the event is then recorded (stream_app/state.py keeps them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fraudmon.core.errors import RulesError

DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_HINT = "use e.g. 500ms, 60s, 10m, 1h, 1d"


def parse_duration_ms(text: Any, where: str) -> int:
    """`500ms`, `60s`, `10m`, `1h` or `1d` in milliseconds; `where` names the setting in the error."""
    match = DURATION.match(str(text).strip())
    if not match:
        raise RulesError(f"{where}: {text!r} is not a duration ({DURATION_HINT})")
    return int(float(match.group(1)) * UNIT_MS[match.group(2)])


class Duration(int):
    """A window or age written as `500ms`, `60s`, `10m`, `1h` or `1d`, held in milliseconds; `text` keeps what
    was written, for the hit's detail."""

    text: str

    def __new__(cls, written: Any) -> Duration:
        match = DURATION.match(str(written).strip())
        if not match:
            raise ValueError(f"{written!r} is not a duration ({DURATION_HINT})")
        value = super().__new__(cls, int(float(match.group(1)) * UNIT_MS[match.group(2)]))
        value.text = str(written).strip()
        return value


STRING_FIELDS = ("account_id", "ip", "device_id", "merchant_id", "counterparty_id", "transaction_id", "country",
                 "channel", "currency", "merchant_category")
"""The event fields an aggregate may be kept by (`by`), and that count_distinct and seen may count (`of`)."""
NUMERIC_FIELDS = ("amount",)
"""The event fields sum, mean and std may summarise (`of`)."""


@dataclass(frozen=True)
class Kind:
    """One aggregate kind: its CEL type ("int", "double", "bool" or "duration"; durations are int ms at run time),
    what its `of` must be (None: no `of`), and its value when the entity has no history."""

    cel_type: str
    of: tuple[str, ...] | None
    default: int | float | bool | None  # None: the aggregate's window or ttl (since_last)


KINDS: dict[str, Kind] = {
    "count": Kind("int", None, 0),
    "sum": Kind("double", NUMERIC_FIELDS, 0.0),
    "mean": Kind("double", NUMERIC_FIELDS, 0.0),
    "std": Kind("double", NUMERIC_FIELDS, 0.0),
    "count_distinct": Kind("int", STRING_FIELDS, 0),
    "seen": Kind("bool", STRING_FIELDS, False),
    "first_seen_age": Kind("duration", None, 0),
    "since_last": Kind("duration", None, None),
}


@dataclass(frozen=True)
class Aggregate:
    """One declared aggregate: exactly one of `window_ms` (sliding, by event time) and `ttl_ms` is set."""

    name: str
    kind: str
    by: str
    of: str | None
    window_ms: int | None
    ttl_ms: int | None

    @property
    def span_ms(self) -> int:
        """The window, or the ttl."""
        return self.window_ms if self.window_ms is not None else self.ttl_ms  # type: ignore[return-value]

    @property
    def default(self) -> int | float | bool:
        """The value read when the entity has no history, or the event lacks `by` (or `of`)."""
        default = KINDS[self.kind].default
        return self.span_ms if default is None else default


def aggregate_type(kind: str) -> str:
    """The CEL type of an aggregate kind's value: "int", "double", "bool" or "duration"."""
    return KINDS[kind].cel_type


NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CEL_RESERVED = frozenset({
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if", "import",
    "let", "loop", "package", "namespace", "return", "var", "void", "while",
})
KEYS = ("kind", "by", "of", "window", "ttl")


def parse_aggregates(raw: Mapping[str, Any] | None) -> tuple[Aggregate, ...]:
    """The rules file's `aggregates:` mapping (name -> {kind, by, of, window | ttl}), in the file's order.
    Raises `RulesError("aggregate <name>: ...")` for anything it does not know."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise RulesError("aggregates: must be a mapping of name -> {kind, by, of, window or ttl}")
    return tuple(_parse_one(name, spec) for name, spec in raw.items())


def _parse_one(name: Any, spec: Any) -> Aggregate:
    where = f"aggregate {name}"
    if not isinstance(name, str) or not NAME.match(name) or name in CEL_RESERVED:
        raise RulesError(f"{where}: the name must be a letter or _ then letters, digits or _ (and not a CEL "
                         f"keyword), as rules read it as agg.<name>")
    if not isinstance(spec, Mapping):
        raise RulesError(f"{where}: must be a mapping with kind, by, of and window or ttl")
    unknown = sorted(str(key) for key in spec if key not in KEYS)
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(unknown)}; use {', '.join(KEYS)}")
    kind_name = spec.get("kind")
    if kind_name not in KINDS:
        raise RulesError(f"{where}: unknown kind {kind_name!r}; use one of {', '.join(KINDS)}")
    kind = KINDS[kind_name]
    by = spec.get("by")
    if by not in STRING_FIELDS:
        raise RulesError(f"{where}: by {by!r} must be one of the event's string fields: {', '.join(STRING_FIELDS)}")
    of = spec.get("of")
    if kind.of is None and of is not None:
        raise RulesError(f"{where}: a {kind_name} takes no `of` (it counts the events of its `by`)")
    if kind.of is not None and of not in kind.of:
        raise RulesError(f"{where}: a {kind_name} needs `of`, one of {', '.join(kind.of)} (got {of!r})")
    if of is not None and of == by:
        raise RulesError(f"{where}: `of` must be another field than `by` ({by})")
    if ("window" in spec) == ("ttl" in spec):
        raise RulesError(f"{where}: give exactly one of `window` (sliding, by event time) and `ttl` (history kept "
                         f"that long after the key's last event)")
    span_key = "window" if "window" in spec else "ttl"
    span_ms = parse_duration_ms(spec[span_key], f"{where}: {span_key}")
    if span_ms <= 0:
        raise RulesError(f"{where}: {span_key} must be at least 1ms")
    window_ms, ttl_ms = (span_ms, None) if span_key == "window" else (None, span_ms)
    return Aggregate(name, kind_name, by, of, window_ms, ttl_ms)
