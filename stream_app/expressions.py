"""Rule expressions: CEL (cel.dev) parsed by the maintained library, type-checked here against the declared
environment, and compiled into Python closures (language reference: docs/rules.md).

The parser is cel-python's (`celpy`, a lark grammar of CEL); neither installed CEL library type-checks against
declarations, and evaluating through them costs tens of microseconds per event, so the checker and the evaluator
are ours. The checked tree becomes one closure per node, `fn(event, agg, score, lists)`, with every name resolved
at compile time (`agg.<name>` is `agg[i]`, `event.<field>` an attribute read) and constant sub-expressions folded.

CEL semantics kept: `int` is 64-bit and overflow is an error; `int`, `uint` and `double` never mix in arithmetic
but compare with each other (ordering and equality); integer `/` truncates toward zero and `/ 0`, `% 0` are
errors; `&&` and `||` absorb an error of either side when the other side decides the result. Durations and
timestamps are whole milliseconds at run time (`int`), as the event and the aggregates carry them.
"""

from __future__ import annotations

import calendar
import enum
import math
import re
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import lark
from celpy.celparser import CELParser

MAX_LENGTH = 4000  # characters of expression text
MAX_DEPTH = 50  # nesting of operators, parentheses, calls and selections (a flat chain a && b && c is one level)
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
UINT_MAX = (1 << 64) - 1
MS_PER_DAY = 86_400_000
TIMESTAMP_MIN_MS, TIMESTAMP_MAX_MS = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 .. 9999-12-31 UTC
DURATION_MAX_MS = 315_576_000_000_000  # 10,000 years, as cel-go and protobuf's Duration


class CelType(enum.StrEnum):
    """A CEL type as declarations name it (`aggregate_type` returns these values as strings)."""

    INT = "int"
    UINT = "uint"
    DOUBLE = "double"
    BOOL = "bool"
    STRING = "string"
    TIMESTAMP = "timestamp"
    DURATION = "duration"
    LIST = "list"
    MAP = "map"
    DYN = "dyn"  # only as the element type of the empty list literal


@dataclass(frozen=True)
class Declarations:
    """What an expression may read besides `event` and `score`: aggregates in order (`agg.<name>` is `agg[i]` at
    run time) with their types, and the names of the lists (`lists.<name>`)."""

    aggregates: tuple[tuple[str, CelType], ...] = ()
    lists: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregates", tuple((name, CelType(kind)) for name, kind in self.aggregates))
        object.__setattr__(self, "lists", frozenset(self.lists))


class ExpressionError(Exception):
    """An expression that does not parse or type-check; `line` and `column` (1-based) point at the token."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.message, self.line, self.column = message, line, column


class EvalError(Exception):
    """A CEL runtime error on one event: no such key, division by zero, overflow, no risk score, a value of an
    unexpected type in the event or the state."""


# ---- types ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Type:
    kind: CelType
    elem: _Type | None = None  # list element, map value
    key: _Type | None = None  # map key

    def __str__(self) -> str:
        if self.kind is CelType.LIST:
            return f"list({self.elem})"
        if self.kind is CelType.MAP:
            return f"map({self.key}, {self.elem})"
        return self.kind.value


INT, UINT, DOUBLE, BOOL, STRING, TIMESTAMP, DURATION, DYN = (
    _Type(kind) for kind in (CelType.INT, CelType.UINT, CelType.DOUBLE, CelType.BOOL, CelType.STRING,
                             CelType.TIMESTAMP, CelType.DURATION, CelType.DYN))
_SCALAR = {t.kind: t for t in (INT, UINT, DOUBLE, BOOL, STRING, TIMESTAMP, DURATION)}
_NUMERIC = frozenset({INT, UINT, DOUBLE})
_ORDERED = frozenset({INT, UINT, DOUBLE, BOOL, STRING, TIMESTAMP, DURATION})
_HASHABLE = frozenset({INT, UINT, DOUBLE, BOOL, STRING, TIMESTAMP, DURATION})
_LISTS = _Type(CelType.LIST, STRING)  # what a `lists.<name>` holds (only `in` reads it)
_NAMED_LIST = object()  # marks a node that is `lists.<name>`


def _list_of(elem: _Type) -> _Type:
    return _Type(CelType.LIST, elem)


def _join(a: _Type, b: _Type) -> _Type | None:
    """The common type of two values (list literal elements, conditional branches), or None."""
    if a == b or b == DYN:
        return a
    if a == DYN:
        return b
    if a.kind is b.kind is CelType.LIST:
        elem = _join(a.elem, b.elem)  # type: ignore[arg-type]
        return None if elem is None else _list_of(elem)
    return None


def _comparable(a: _Type, b: _Type) -> bool:
    """`==` and `in` accept the pair: numbers of any kind (compared as numbers), or types that agree."""
    return (a in _NUMERIC and b in _NUMERIC) or _join(a, b) is not None


# ---- runtime helpers -------------------------------------------------------------------------------------------

Fn = Callable[[Any, Any, Any, Any], Any]  # fn(event, agg, score, lists)


def _overflow(what: str) -> EvalError:
    return EvalError(f"{what} overflow: the result is outside the 64-bit range")


def _check_int(value: int) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    raise _overflow("int")


def _check_uint(value: int) -> int:
    if 0 <= value <= UINT_MAX:
        return value
    raise _overflow("uint")


def _check_timestamp(value: int) -> int:
    if TIMESTAMP_MIN_MS <= value <= TIMESTAMP_MAX_MS:
        return value
    raise EvalError("timestamp overflow: the result is outside 0001-01-01 .. 9999-12-31")


def _check_duration(value: int) -> int:
    if -DURATION_MAX_MS <= value <= DURATION_MAX_MS:
        return value
    raise EvalError("duration overflow: the result is longer than 10,000 years")


def _int_div(x: int, y: int) -> int:
    if y == 0:
        raise EvalError("division by zero")
    q = abs(x) // abs(y)
    return q if (x < 0) == (y < 0) else -q


def _int_mod(x: int, y: int) -> int:
    if y == 0:
        raise EvalError("modulus by zero")
    return x - y * _int_div(x, y)


def _checked_int_div(x: int, y: int) -> int:
    return _check_int(_int_div(x, y))


def _double_div(x: float, y: float) -> float:
    try:
        return x / y
    except ZeroDivisionError:
        if x != x or x == 0:
            return math.nan
        return math.copysign(math.inf, x) * math.copysign(1.0, y)


_CHECK = {CelType.INT: _check_int, CelType.UINT: _check_uint}
_ARITH: dict[tuple[str, CelType], Callable[[Any, Any], Any]] = {
    ("+", CelType.INT): lambda x, y: _check_int(x + y),
    ("-", CelType.INT): lambda x, y: _check_int(x - y),
    ("*", CelType.INT): lambda x, y: _check_int(x * y),
    ("/", CelType.INT): _checked_int_div,
    ("%", CelType.INT): _int_mod,  # INT_MIN % -1 is 0, which fits: no overflow
    ("+", CelType.UINT): lambda x, y: _check_uint(x + y),
    ("-", CelType.UINT): lambda x, y: _check_uint(x - y),
    ("*", CelType.UINT): lambda x, y: _check_uint(x * y),
    ("/", CelType.UINT): _int_div,
    ("%", CelType.UINT): _int_mod,
    ("+", CelType.DOUBLE): lambda x, y: x + y,
    ("-", CelType.DOUBLE): lambda x, y: x - y,
    ("*", CelType.DOUBLE): lambda x, y: x * y,
    ("/", CelType.DOUBLE): _double_div,
}


def _time_arith(op: str, left: _Type, right: _Type) -> tuple[_Type, Callable[[int, int], int]] | None:
    """Timestamp and duration arithmetic: the result type and the (checked) operation, or None."""
    pair = (op, left.kind, right.kind)
    if pair == ("+", CelType.TIMESTAMP, CelType.DURATION) or pair == ("+", CelType.DURATION, CelType.TIMESTAMP):
        return TIMESTAMP, lambda x, y: _check_timestamp(x + y)
    if pair == ("-", CelType.TIMESTAMP, CelType.DURATION):
        return TIMESTAMP, lambda x, y: _check_timestamp(x - y)
    if pair == ("-", CelType.TIMESTAMP, CelType.TIMESTAMP):
        return DURATION, lambda x, y: _check_duration(x - y)
    if pair == ("+", CelType.DURATION, CelType.DURATION):
        return DURATION, lambda x, y: _check_duration(x + y)
    if pair == ("-", CelType.DURATION, CelType.DURATION):
        return DURATION, lambda x, y: _check_duration(x - y)
    return None


def _equal(x: Any, y: Any) -> bool:
    """CEL equality for values the checker let meet (numbers across kinds, NaN equal to nothing)."""
    if x.__class__ is list and y.__class__ is list:
        return len(x) == len(y) and all(_equal(a, b) for a, b in zip(x, y, strict=True))
    if x.__class__ is dict and y.__class__ is dict:
        return x.keys() == y.keys() and all(_equal(v, y[k]) for k, v in x.items())
    return x == y


def _member(x: Any, values: list) -> bool:
    return any(_equal(x, v) for v in values)


# Go's duration syntax: a sequence of decimal numbers with a unit ("72h", "1h30m", "1.5s", "-2m", "0").
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NS_PER_UNIT = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
                "h": 3600 * 10**9}


def parse_duration(text: str) -> int:
    """A Go-style duration string to whole milliseconds; ValueError says what is wrong."""
    if not isinstance(text, str):
        raise ValueError("duration() takes a string such as \"72h\" or \"1h30m\"")
    body, sign = text, 1
    if body and body[0] in "+-":
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if body == "0":
        return 0
    position, nanoseconds = 0, 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            break
        whole, _, fraction = match.group(1).partition(".")
        scale = _NS_PER_UNIT[match.group(2)]
        nanoseconds += int(whole or "0") * scale
        if fraction:
            nanoseconds += int(fraction) * scale // 10 ** len(fraction)
        position = match.end()
    if not body or position != len(body):
        raise ValueError(f"{text[:40]!r} is not a duration: use numbers with units h, m, s, ms, us, ns "
                         "(e.g. \"72h\", \"1h30m\", \"1.5s\")")
    if nanoseconds % 1_000_000:
        raise ValueError(f"duration {text[:40]!r} is not a whole number of milliseconds")
    return _duration_value(sign * nanoseconds // 1_000_000)


def _duration_value(ms: int) -> int:
    if -DURATION_MAX_MS <= ms <= DURATION_MAX_MS:
        return ms
    raise ValueError("duration out of range (longer than 10,000 years)")


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")


def parse_timestamp(text: str) -> int:
    """An RFC 3339 timestamp to epoch milliseconds (digits beyond the millisecond are dropped)."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{str(text)[:40]!r} is not an RFC 3339 timestamp such as \"2024-01-31T12:00:00Z\"")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{text[:40]!r} is not a valid timestamp: {exc}") from None
    offset_ms = 0
    if zone not in ("Z", "z"):
        offset_ms = (int(zone[1:3]) * 60 + int(zone[4:6])) * 60_000 * (1 if zone[0] == "+" else -1)
    epoch_s = calendar.timegm(moment.timetuple())
    return _check_timestamp(epoch_s * 1000 + int((fraction + "00")[:3]) - offset_ms)


def format_timestamp(ms: int) -> str:
    """RFC 3339 in UTC with the shortest fraction, as cel-go's string(timestamp)."""
    seconds, millis = divmod(ms, 1000)
    days, rest = divmod(seconds, 86_400)
    moment = datetime(1970, 1, 1, tzinfo=UTC).fromordinal(719_163 + days).replace(tzinfo=UTC)
    text = f"{moment:%Y-%m-%d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return text + (f".{millis:03d}".rstrip("0") if millis else "") + "Z"


def format_duration(ms: int) -> str:
    """Seconds with the shortest fraction and an `s`, as cel-go's string(duration): "259200s", "1.5s"."""
    sign, ms = ("-" if ms < 0 else ""), abs(ms)
    seconds, millis = divmod(ms, 1000)
    return f"{sign}{seconds}" + (f".{millis:03d}".rstrip("0") if millis else "") + "s"


def format_double(value: float) -> str:
    """Go's strconv.FormatFloat(value, 'g', -1, 64), which cel-go's string(double) uses: "1e+06", "0.5"."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    mantissa, _, exponent = repr(abs(value)).partition("e")  # repr: the shortest digits that read back
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) - (len(whole + fraction) - len(digits)) + int(exponent or 0)  # digits before the point
    digits = digits.rstrip("0")
    exp = point - 1
    if exp < -4 or exp >= 6:  # %e, at least two exponent digits
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{body}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_DOUBLE_TEXT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
                          re.IGNORECASE)


def _to_int(value: Any, source: _Type) -> int:
    if source.kind is CelType.DOUBLE:
        if not -9.223372036854775808e18 < value < 9.223372036854775808e18:
            raise EvalError(f"int({value!r}): outside the int range")
        return int(value)
    if source.kind is CelType.STRING:
        if not _INT_TEXT.fullmatch(value):
            raise EvalError(f"int({value[:40]!r}): not a decimal integer")
        return _check_int(int(value))
    if source.kind is CelType.TIMESTAMP:
        return value // 1000  # epoch seconds
    return _check_int(value)


def _to_uint(value: Any, source: _Type) -> int:
    if source.kind is CelType.DOUBLE:
        if not 0.0 <= value < 1.8446744073709552e19:
            raise EvalError(f"uint({value!r}): outside the uint range")
        return int(value)
    if source.kind is CelType.STRING:
        if not _INT_TEXT.fullmatch(value) or value[0] == "-":
            raise EvalError(f"uint({value[:40]!r}): not a decimal unsigned integer")
        return _check_uint(int(value))
    return _check_uint(value)


def _to_double(value: Any, source: _Type) -> float:
    if source.kind is CelType.STRING:
        if not _DOUBLE_TEXT.fullmatch(value):
            raise EvalError(f"double({value[:40]!r}): not a number")
        return float(value)
    return float(value)


def _to_string(value: Any, source: _Type) -> str:
    kind = source.kind
    if kind is CelType.STRING:
        return value
    if kind is CelType.BOOL:
        return "true" if value else "false"
    if kind is CelType.DOUBLE:
        return format_double(value)
    if kind is CelType.TIMESTAMP:
        return format_timestamp(value)
    if kind is CelType.DURATION:
        return format_duration(value)
    return str(int(value))


def _parsed(parse: Callable[[str], int], value: str, name: str) -> int:
    try:
        return parse(value)
    except ValueError as exc:
        raise EvalError(f"{name}(): {exc}") from None


def _to_timestamp(value: Any, source: _Type) -> int:
    if source.kind is CelType.STRING:
        return _parsed(parse_timestamp, value, "timestamp")
    if source.kind is CelType.INT:
        return _check_timestamp(value * 1000)  # epoch seconds
    return value


def _to_duration(value: Any, source: _Type) -> int:
    return _parsed(parse_duration, value, "duration") if source.kind is CelType.STRING else value


# conversion function -> (accepted argument kinds, result type, converter)
_CONVERSIONS: dict[str, tuple[frozenset[CelType], _Type, Callable[[Any, _Type], Any]]] = {
    "int": (frozenset({CelType.INT, CelType.UINT, CelType.DOUBLE, CelType.STRING, CelType.TIMESTAMP}), INT, _to_int),
    "uint": (frozenset({CelType.INT, CelType.UINT, CelType.DOUBLE, CelType.STRING}), UINT, _to_uint),
    "double": (frozenset({CelType.INT, CelType.UINT, CelType.DOUBLE, CelType.STRING}), DOUBLE, _to_double),
    "string": (frozenset({CelType.INT, CelType.UINT, CelType.DOUBLE, CelType.STRING, CelType.BOOL,
                          CelType.TIMESTAMP, CelType.DURATION}), STRING, _to_string),
    "timestamp": (frozenset({CelType.STRING, CelType.INT, CelType.TIMESTAMP}), TIMESTAMP, _to_timestamp),
    "duration": (frozenset({CelType.STRING, CelType.DURATION}), DURATION, _to_duration),
}


def _utc(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC).fromordinal(719_163 + ms // MS_PER_DAY).replace(tzinfo=UTC)


# timestamp getters (UTC only), as CEL's standard library numbers them
_TIMESTAMP_GETTERS: dict[str, Callable[[int], int]] = {
    "getFullYear": lambda ms: _utc(ms).year,
    "getMonth": lambda ms: _utc(ms).month - 1,
    "getDate": lambda ms: _utc(ms).day,
    "getDayOfMonth": lambda ms: _utc(ms).day - 1,
    "getDayOfWeek": lambda ms: (ms // MS_PER_DAY + 4) % 7,  # 1970-01-01 was a Thursday; 0 is Sunday
    "getDayOfYear": lambda ms: _utc(ms).timetuple().tm_yday - 1,
    "getHours": lambda ms: ms % MS_PER_DAY // 3_600_000,
    "getMinutes": lambda ms: ms % 3_600_000 // 60_000,
    "getSeconds": lambda ms: ms % 60_000 // 1000,
    "getMilliseconds": lambda ms: ms % 1000,
}
# duration getters: the whole duration in that unit, truncated toward zero
_DURATION_GETTERS: dict[str, Callable[[int], int]] = {
    "getHours": lambda ms: _int_div(ms, 3_600_000),
    "getMinutes": lambda ms: _int_div(ms, 60_000),
    "getSeconds": lambda ms: _int_div(ms, 1000),
    "getMilliseconds": lambda ms: ms,
}


# ---- regular expressions: the RE2 subset that Python's `re` runs the same way ------------------------------------

_RE_MAX_REPEAT = 1000  # RE2's limit on {n,m}
_RE_MAX_UNBOUNDED = 3  # `*`, `+`, `{n,}` in one pattern: Python's matcher backtracks, RE2's does not
_RE_GROUP_REFUSED = {"=": "lookahead", "!": "lookahead", "<=": "lookbehind", "<!": "lookbehind",
                     ">": "atomic groups", "(": "conditionals", "P=": "backreferences", "#": "comments"}


def translate_re2(pattern: str) -> re.Pattern[str]:
    """Compile a CEL (RE2) pattern with Python's `re`, or raise ValueError naming what is not supported.

    Supported: literals, `.`, classes `[...]` (ranges, negation, `[:alpha:]`-style names inside), `\\d \\w \\s
    \\b \\A \\z` and their negations (ASCII, as RE2), `\\x{10FFFF}`, anchors `^ $`, groups `( )`, `(?: )`,
    `(?P<n> )`, `(?<n> )`, flags `(?i) (?m) (?s)` (at the start, or as `(?i: )`), alternation `|`, and `* + ? {n}
    {n,} {n,m}` with lazy `?`. Refused: backreferences, lookaround, atomic and possessive forms, `\\p{..}`, `\\C`,
    `\\Q..\\E`, counts above 1000, a repeated group that holds another repetition or an alternation, and more
    than 3 unbounded repetitions: the matcher here backtracks where RE2's never does, and these rules keep its
    time bounded on event strings."""
    out: list[str] = []
    stack: list[dict[str, bool]] = [{"rep": False, "alt": False}]
    unbounded, i, n = 0, 0, len(pattern)
    multiline = bool(re.match(r"(\(\?[ims]+\))*\(\?[is]*m", pattern))
    previous = "none"  # what the last piece was: none (start, `(`, `|`), atom, group (just closed), repeat
    closed: dict[str, bool] | None = None  # the group that just closed
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if not nxt:
                raise ValueError("the pattern ends with a lone backslash")
            if nxt.isdigit():
                raise ValueError("backreferences and octal escapes (\\1, \\012) are not supported")
            if nxt in "pPCQEZGXKRhHNVgkeu":
                raise ValueError(f"\\{nxt} is not supported")
            if nxt == "x" and pattern[i + 2:i + 3] == "{":
                end = pattern.find("}", i)
                code = pattern[i + 3:end] if end > 0 else ""
                if not re.fullmatch(r"[0-9A-Fa-f]{1,6}", code) or int(code, 16) > 0x10FFFF:
                    raise ValueError("\\x{...} needs 1 to 6 hexadecimal digits")
                out.append(f"\\U{int(code, 16):08x}")
                i = end + 1
            else:
                out.append(r"\Z" if nxt == "z" else pattern[i:i + 2])
                i += 2
            previous = "atom"
            continue
        if c == "[":
            end = _class_end(pattern, i)
            out.append(_translate_class(pattern[i:end + 1]))
            i, previous = end + 1, "atom"
            continue
        if c == "(":
            prefix = "("
            if pattern.startswith("(?", i):
                prefix = _group_prefix(pattern, i, out)
                if prefix.endswith(")"):  # (?i) at the start: flags, not a group
                    out.append(prefix)
                    i += len(prefix)
                    continue
            stack.append({"rep": False, "alt": False})
            out.append("(?P<" + prefix[3:] if prefix.startswith("(?<") else prefix)
            i, previous = i + len(prefix), "none"
            continue
        if c == ")":
            if len(stack) == 1:
                raise ValueError("an unmatched )")
            closed = stack.pop()
            stack[-1]["rep"] = stack[-1]["rep"] or closed["rep"]
            stack[-1]["alt"] = stack[-1]["alt"] or closed["alt"]
            out.append(c)
            i, previous = i + 1, "group"
            continue
        if c == "|":
            stack[-1]["alt"] = True
            out.append(c)
            i, previous = i + 1, "none"
            continue
        quantifier = re.match(r"\*|\+|\?|\{(\d+)(,(\d*))?\}", pattern[i:]) if c in "*+?{" else None
        if quantifier is not None:
            text = quantifier.group(0)
            low, comma, high = quantifier.group(1), quantifier.group(2), quantifier.group(3)
            if low is not None and (int(low) > _RE_MAX_REPEAT or (high and int(high) > _RE_MAX_REPEAT)):
                raise ValueError(f"repeat counts above {_RE_MAX_REPEAT} are not supported")
            if low is not None and high and int(high) < int(low):
                raise ValueError(f"a bad repeat {text}")
            if previous == "none":
                raise ValueError(f"the repetition {text} follows nothing")
            if previous == "repeat":
                raise ValueError(f"a repetition of a repetition ({text})")
            is_unbounded = text in ("*", "+") or (comma is not None and not high)
            repeats = is_unbounded or int(high or low or 1) > 1
            if repeats and previous == "group" and closed is not None and (closed["rep"] or closed["alt"]):
                raise ValueError("a repeated group may not hold another repetition or an alternation (|)")
            stack[-1]["rep"] = stack[-1]["rep"] or repeats
            unbounded += is_unbounded
            if unbounded > _RE_MAX_UNBOUNDED:
                raise ValueError(f"more than {_RE_MAX_UNBOUNDED} unbounded repetitions (*, +, {{n,}})")
            i += len(text)
            if pattern[i:i + 1] == "?":
                text, i = text + "?", i + 1
            elif pattern[i:i + 1] == "+":
                raise ValueError("possessive repetitions (*+, ++) are not supported")
            out.append(text)
            previous = "repeat"
            continue
        out.append(r"\Z" if c == "$" and not multiline else (re.escape(c) if c in "{}" else c))
        i, previous = i + 1, ("none" if c in "^$" else "atom")
    if len(stack) != 1:
        raise ValueError("an unclosed (")
    try:
        return re.compile("".join(out), re.ASCII)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ValueError(f"not a supported regular expression: {exc}") from None


def _group_prefix(pattern: str, i: int, out: list[str]) -> str:
    """The opening of a `(?` group: `(?:`, `(?i:`, `(?P<name>`, `(?<name>`, or flags `(?i)` at the start."""
    rest = pattern[i + 2:i + 4]
    for prefix, what in _RE_GROUP_REFUSED.items():
        if rest.startswith(prefix):
            raise ValueError(f"{what} ((?{prefix}...) are not supported")
    named = re.match(r"\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>", pattern[i:])
    if named is not None:
        return "(?<" + named.group(1) + ">" if not named.group(0).startswith("(?P") else named.group(0)
    flags = re.match(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])", pattern[i:])
    if flags is None:
        raise ValueError("an unknown (? group")
    if set(flags.group(1) + (flags.group(2) or "")) - set("ims"):
        raise ValueError("only the flags i, m and s are supported")
    if flags.group(3) == ")" and (flags.group(2) is not None or any(not p.startswith("(?") for p in out)
                                  or not flags.group(1)):
        raise ValueError("flags such as (?i) must stand at the start of the pattern (or use (?i:...))")
    return flags.group(0)


def _class_end(pattern: str, start: int) -> int:
    """The index of the `]` that closes the class opened at `start`."""
    end, n = start + 1, len(pattern)
    if pattern[end:end + 1] == "^":
        end += 1
    if pattern[end:end + 1] == "]":
        end += 1
    while end < n and pattern[end] != "]":
        if pattern[end] == "\\":
            escaped = pattern[end + 1:end + 2]
            if escaped in ("p", "P", "Q", "E", "C") or escaped.isdigit():
                raise ValueError(f"\\{escaped} is not supported in a class")
            end += 2
            continue
        if pattern.startswith("[:", end):
            close = pattern.find(":]", end + 2)
            if close < 0:
                raise ValueError("an unclosed [: in a class")
            end = close + 2
            continue
        if pattern[end] == "[":
            raise ValueError("a nested [ in a class: escape it as \\[")
        end += 1
    if end >= n:
        raise ValueError("an unclosed [")
    return end


_POSIX_CLASSES = {"alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
                  "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
                  "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_",
                  "xdigit": "0-9A-Fa-f"}


def _translate_class(text: str) -> str:
    def posix(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _POSIX_CLASSES:
            raise ValueError(f"an unknown class [:{name}:]")
        return _POSIX_CLASSES[name]
    body = re.sub(r"\[:(\^?\w+):\]", posix, text[1:-1])
    if "&&" in body or "--" in body or "~~" in body or "||" in body:  # set operations Python would warn about
        body = body.replace("&&", "&\\&").replace("--", "-\\-").replace("~~", "~\\~").replace("||", "|\\|")
    return "[" + body + "]"


# ---- the compiled form ---------------------------------------------------------------------------------------

class Compiled:
    """A checked, compiled expression. Call it with (event, agg, score, lists); it returns its value (a bool for
    a rule) or raises EvalError, and nothing else."""

    __slots__ = ("text", "references", "type", "fn", "_readers")

    def __init__(self, text: str, fn: Fn, type_: CelType, references: tuple[str, ...],
                 readers: dict[str, Fn]) -> None:
        self.text, self.fn, self.type, self.references, self._readers = text, fn, type_, references, readers

    def __call__(self, event: Any, agg: Sequence[Any] | None, score: float | None,
                 lists: Mapping[str, Container[str]]) -> Any:
        return self.fn(event, agg, score, lists)  # (each instance's class calls `fn` directly)

    @classmethod
    def _make(cls, text: str, fn: Fn, type_: CelType, references: tuple[str, ...],
              readers: dict[str, Fn]) -> Compiled:
        """An instance whose call is `fn` itself: a class of its own with `fn` as `__call__` saves a Python
        frame per evaluation (a third of a simple rule's cost)."""
        own = type(cls.__name__, (cls,), {"__slots__": (), "__call__": staticmethod(fn),
                                          "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        return own(text, fn, type_, references, readers)

    def value_of(self, reference: str, event: Any, agg: Sequence[Any] | None, score: float | None,
                 lists: Mapping[str, Container[str]]) -> Any:
        """The value `reference` (one of `references`) has for this event, as the expression sees it (timestamps
        and durations in ms; a list: the number of its entries). EvalError when it has none (no risk score, no
        such feature) or the name is not one this expression reads."""
        reader = self._readers.get(reference)
        if reader is None:
            raise EvalError(f"{reference!r} is not read by this expression")
        try:
            return reader(event, agg, score, lists)
        except EvalError:
            raise
        except Exception as exc:
            raise EvalError(f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def values(self, event: Any, agg: Sequence[Any] | None, score: float | None,
               lists: Mapping[str, Container[str]]) -> dict[str, Any]:
        """Every reference that has a value for this event, with that value."""
        found = {}
        for reference in self.references:
            try:
                found[reference] = self.value_of(reference, event, agg, score, lists)
            except EvalError:
                continue
        return found

    def __repr__(self) -> str:
        return f"Compiled({self.text!r})"


def compile_expression(text: str, declarations: Declarations, *,
                       expect: CelType | None = CelType.BOOL) -> Compiled:
    """Parse, type-check and compile `text`; it must have type `expect` (None: any). Raises ExpressionError
    (message, line, column) for anything wrong with it, never another exception."""
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be text, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is {len(text)} characters long, over the limit of {MAX_LENGTH}: "
                              "split it into several rules", 1, 1)
    tree = _parse(text)
    builder = _Builder(declarations)
    try:
        node = builder.build(tree, 0)
    except ExpressionError:
        raise
    except RecursionError:
        raise ExpressionError(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)") from None
    except Exception as exc:  # a case the checker does not know: refuse the expression rather than crash
        raise ExpressionError(f"cannot compile this expression ({type(exc).__name__}: {exc})") from None
    if node.special is not None:
        raise ExpressionError(node.special, node.line, node.column)
    if expect is not None and node.type.kind is not CelType(expect):
        raise ExpressionError(f"the expression has type {node.type}, but a rule needs a {CelType(expect)} "
                              "(a condition such as `x > 5`)", node.line, node.column)
    fn = builder.function(node)
    readers = builder.references()
    return Compiled._make(text, fn, node.type.kind, tuple(readers), readers)


def _parse(text: str) -> lark.Tree:
    """The library's parse tree, or ExpressionError at the offending token."""
    CELParser()  # builds the (shared) lark parser on first use
    parser = CELParser.CEL_PARSER
    assert parser is not None
    try:
        return parser.parse(text)
    except lark.exceptions.UnexpectedToken as exc:
        token = exc.token
        if token.type == "$END":
            raise ExpressionError("syntax error: the expression ends too early", _last_line(text),
                                  _end_column(text)) from None
        raise ExpressionError(f"syntax error: unexpected {str(token)[:40]!r}", max(1, exc.line or 1),
                              max(1, exc.column or 1)) from None
    except lark.exceptions.UnexpectedCharacters as exc:
        raise ExpressionError(f"syntax error: unexpected character {text[exc.pos_in_stream]!r}",
                              max(1, exc.line or 1), max(1, exc.column or 1)) from None
    except lark.exceptions.UnexpectedEOF:
        raise ExpressionError("syntax error: the expression ends too early", _last_line(text),
                              _end_column(text)) from None
    except RecursionError:
        raise ExpressionError("the expression is nested too deeply") from None
    except Exception as exc:  # anything else the library raises on strange input
        raise ExpressionError(f"syntax error: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
                              getattr(exc, "line", 1) or 1, getattr(exc, "column", 1) or 1) from None


def _last_line(text: str) -> int:
    return text.count("\n") + 1


def _end_column(text: str) -> int:
    return len(text) - (text.rfind("\n") + 1) + 1


# ---- the checker and compiler --------------------------------------------------------------------------------

_NO_CONST = object()


class _Node:
    """A checked sub-expression: its type, its closure, its constant value (or _NO_CONST), where it starts."""

    __slots__ = ("type", "fn", "const", "line", "column", "special", "name", "has", "code", "has_code")

    def __init__(self, type_: _Type, fn: Fn | None, line: int, column: int, const: Any = _NO_CONST) -> None:
        self.type, self.fn, self.const, self.line, self.column = type_, fn, const, line, column
        self.special: str | None = None  # why this node cannot stand alone (`lists.x`, `event`), or None
        self.name: str | None = None  # for `lists.<name>`: the name; for a selection: its dotted reference
        self.has: Fn | None = None  # for a selection: its presence test (`has()`)
        self.code: str | None = None  # a Python expression over e, a, s, ls computing the same (fast path)
        self.has_code: str | None = None
        if fn is None:
            value = const
            self.fn = lambda e, a, s, ls: value


def _const(type_: _Type, value: Any, line: int, column: int) -> _Node:
    return _Node(type_, None, line, column, value)


def _fold(type_: _Type, fn: Fn, line: int, column: int, parts: Sequence[_Node]) -> _Node:
    """A node for `fn`, evaluated now when every part is constant and it does not fail (a constant error stays
    a run-time error, so `false && 1/0 == 1` is false)."""
    if all(part.const is not _NO_CONST for part in parts):
        try:
            return _const(type_, fn(None, None, None, None), line, column)
        except Exception:
            pass
    return _Node(type_, fn, line, column)


# event fields: CEL name -> (CEL type, attribute of Event); an absent field reads as its type's zero value
_EVENT_FIELDS: dict[str, tuple[_Type, str]] = {
    **{name: (STRING, name) for name in ("transaction_id", "account_id", "currency", "merchant_id",
                                         "merchant_category", "country", "ip", "device_id", "channel",
                                         "counterparty_id")},
    "amount": (DOUBLE, "amount"),
    "timestamp": (TIMESTAMP, "timestamp_ms"),
    "account_created_at": (TIMESTAMP, "account_created_ms"),
    "features": (_Type(CelType.MAP, DOUBLE, STRING), "features"),
}
_ZERO = {CelType.STRING: '""', CelType.DOUBLE: "0.0", CelType.TIMESTAMP: "0", CelType.MAP: "{}"}


def _event_field(name: str) -> tuple[_Type, Fn, Fn, str, str] | None:
    """(type, reader, presence, reader code, presence code) of `event.<name>`, or None. The code names only
    attributes from the table above."""
    if name not in _EVENT_FIELDS:
        return None
    type_, attr = _EVENT_FIELDS[name]
    if name == "features":
        code, present = "(e.features or {})", "bool(e.features)"
    elif name in ("transaction_id", "account_id", "amount", "timestamp"):  # required by the event contract
        code, present = f"e.{attr}", f"(e.{attr} is not None)"
    else:
        code, present = f"(e.{attr} or {_ZERO[type_.kind]})", f"(e.{attr} is not None)"
    namespace: dict[str, Any] = {"__builtins__": {"bool": bool}}
    exec(f"def read(e, a, s, ls): return {code}\ndef present(e, a, s, ls): return {present}\n", namespace)
    return type_, namespace["read"], namespace["present"], code, present


EVENT_FIELDS = ("transaction_id", "account_id", "amount", "timestamp", "currency", "merchant_id",
                "merchant_category", "country", "ip", "device_id", "channel", "counterparty_id",
                "account_created_at", "features")


def _read_score(e: Any, a: Any, s: Any, ls: Any) -> float:
    if s is None:
        raise EvalError("score: this event has no risk score (the model did not score it)")
    return s


def _pos(tree: lark.Tree | lark.Token) -> tuple[int, int]:
    if isinstance(tree, lark.Token):
        return tree.line or 1, tree.column or 1
    meta = tree.meta
    return (getattr(meta, "line", 1), getattr(meta, "column", 1)) if not meta.empty else (1, 1)


def _op_pos(op_tree: lark.Tree, op: str) -> tuple[int, int]:
    """Where the operator of `relation_lt` & co. stands: the last token of the node's span."""
    meta = op_tree.meta
    if meta.empty:
        return 1, 1
    return meta.end_line, max(1, meta.end_column - len(op))


_PASS = frozenset({"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary",
                   "member", "primary"})
_RELATIONS = {"relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=",
              "relation_eq": "==", "relation_ne": "!=", "relation_in": "in"}
_ADDITIONS = {"addition_add": "+", "addition_sub": "-"}
_MULTIPLICATIONS = {"multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%"}
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", '"': '"', "'": "'",
            "\\": "\\", "?": "?", "`": "`"}
_ESCAPE = re.compile(r"\\(?:([abfnrtv\"'\\?`])|[xX]([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|"
                     r"([0-3][0-7]{2})|(.?))", re.DOTALL)


def _string_literal(token: lark.Token) -> str:
    text = str(token)
    raw = text[0] in "rR"
    body = text[1:] if raw else text
    quote = 3 if body[:3] in ('"""', "'''") else 1
    body = body[quote:-quote]
    if raw:
        return body

    def escape(match: re.Match[str]) -> str:
        simple, hex2, hex4, hex8, octal, bad = match.groups()
        if simple is not None:
            return _ESCAPES[simple]
        if bad is not None:
            raise ValueError(f"unknown escape \\{bad}")
        code = int(hex2 or hex4 or hex8, 16) if octal is None else int(octal, 8)
        if code > 0x10FFFF:
            raise ValueError(f"escape {match.group(0)} is not a Unicode code point")
        return chr(code)

    value = _ESCAPE.sub(escape, body)
    if any("\ud800" <= ch <= "\udfff" for ch in value):  # surrogate pairs from \u escapes -> one code point
        try:
            value = value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            raise ValueError("a lone surrogate (\\ud800-\\udfff) is not a character") from None
    return value


class _Builder:
    """Type-checks the lark tree against the declarations and builds closures, in one walk."""

    def __init__(self, declarations: Declarations) -> None:
        self.aggregates = {name: (index, _SCALAR[kind]) for index, (name, kind) in
                           enumerate(declarations.aggregates)}
        self.lists = declarations.lists
        self.readers: dict[str, Fn] = {}  # reference -> reader, in order of first appearance
        self.uses: dict[str, int] = {}  # reference -> how many nodes read it (a map read only by key: 0)
        self.namespace: dict[str, Any] = {"__builtins__": {"len": len, "Exception": Exception}}
        self.temps = 0
        self.bool_reads = False  # whether a bool aggregate is read (its value comes from outside)

    # -- the fast path: one generated Python function whose only names are ours (no expression text in it)
    def obj(self, value: Any) -> str:
        name = f"_k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def temp(self) -> str:
        self.temps += 1
        return f"_t{self.temps}"

    def code_of(self, node: _Node) -> str:
        if node.const is not _NO_CONST:
            return self.obj(node.const)
        if node.code is not None:
            return node.code
        return f"{self.obj(node.fn)}(e, a, s, ls)"

    def gen(self, node: _Node, template: str, *parts: _Node) -> _Node:
        """Give `node` the code `template` formatted with its parts' code (constants need none)."""
        if node.const is _NO_CONST:
            node.code = template.format(*(self.code_of(part) for part in parts))
        return node

    def checked(self, node: _Node, expression: str, low: int, high: int) -> _Node:
        """`node` computes the integer `expression`, an overflow error outside [low, high]."""
        if node.const is _NO_CONST:
            t = self.temp()
            node.code = f"({t} if {low} <= ({t} := {expression}) <= {high} else {self.obj(_raise_overflow)}())"
        return node

    def function(self, node: _Node) -> Fn:
        """The compiled rule: the generated fast path; on any exception the closures, which hold CEL's exact
        semantics (errors that && and || absorb, EvalError with its message), decide."""
        slow = node.fn
        if node.type == BOOL and self.bool_reads:  # a raw read of state could pass a non-bool through && and ||
            body = "r = " + self.code_of(node) + "\n        if r is True or r is False:\n            return r\n"
        else:
            body = "return " + self.code_of(node) + "\n"
        source = ("def _rule(e, a, s, ls):\n    try:\n        " + body +
                  "    except Exception:\n        pass\n    return _slow(e, a, s, ls)\n")
        self.namespace["_slow"] = _guarded(slow, node.type == BOOL)
        try:
            exec(compile(source, "<rule>", "exec"), self.namespace)  # noqa: S102 - our own templates only
        except (SyntaxError, RecursionError, MemoryError, ValueError):  # too deep for Python's compiler
            return self.namespace["_slow"]
        return self.namespace["_rule"]

    def error(self, message: str, where: lark.Tree | lark.Token | _Node | tuple[int, int]) -> ExpressionError:
        if isinstance(where, _Node):
            return ExpressionError(message, where.line, where.column)
        if isinstance(where, tuple):
            return ExpressionError(message, *where)
        return ExpressionError(message, *_pos(where))

    def deep(self, depth: int, where: Any) -> None:
        if depth > MAX_DEPTH:
            raise self.error(f"the expression is nested more than {MAX_DEPTH} levels deep: split it", where)

    def standalone(self, node: _Node) -> _Node:
        if node.special is not None:
            raise self.error(node.special, node)
        return node

    def build(self, tree: lark.Tree, depth: int) -> _Node:
        self.deep(depth, tree)
        while tree.data in _PASS and len(tree.children) == 1 and isinstance(tree.children[0], lark.Tree):
            tree = tree.children[0]
        handler = getattr(self, f"_{tree.data}", None)
        if handler is None:
            raise self.error(f"{tree.data.replace('_', ' ')} is not supported", tree)
        return handler(tree, depth + 1)

    def sub(self, tree: lark.Tree, depth: int) -> _Node:
        return self.standalone(self.build(tree, depth))

    # -- logic
    def _expr(self, tree: lark.Tree, depth: int) -> _Node:
        cond, yes, no = (self.sub(child, depth) for child in tree.children)
        if cond.type != BOOL:
            raise self.error(f"the condition of ?: must be a bool, not {cond.type}", cond)
        joined = _join(yes.type, no.type)
        if joined is None:
            raise self.error(f"the branches of ?: have different types, {yes.type} and {no.type}", no)
        if cond.const is not _NO_CONST:
            return yes if cond.const else no
        c, y, n = cond.fn, yes.fn, no.fn
        node = _Node(joined, lambda e, a, s, ls: y(e, a, s, ls) if c(e, a, s, ls) else n(e, a, s, ls), cond.line,
                     cond.column)
        return self.gen(node, "({1} if {0} else {2})", cond, yes, no)

    def _chain(self, tree: lark.Tree, depth: int) -> list[lark.Tree]:
        operands = []
        while len(tree.children) == 2:
            operands.append(tree.children[1])
            tree = tree.children[0]
        operands.append(tree.children[0])
        return operands[::-1]

    def _logic(self, tree: lark.Tree, depth: int, is_and: bool) -> _Node:
        symbol = "&&" if is_and else "||"
        nodes = [self.sub(child, depth) for child in self._chain(tree, depth)]
        for node in nodes:
            if node.type != BOOL:
                raise self.error(f"{symbol} needs bool operands, not {node.type}", node)
        decisive = not is_and  # the value that decides the result: false for &&, true for ||
        if any(node.const is decisive for node in nodes):
            return _const(BOOL, decisive, nodes[0].line, nodes[0].column)
        nodes = [node for node in nodes if node.const is _NO_CONST]  # constants that do not decide drop out
        if not nodes:
            return _const(BOOL, not decisive, *_pos(tree))
        if len(nodes) == 1:
            return nodes[0]
        fns = [node.fn for node in nodes]
        if len(nodes) == 2:
            fn = _and(*fns) if is_and else _or(*fns)
        else:
            fn = _all(fns) if is_and else _any(fns)
        joiner = " and " if is_and else " or "
        return self.gen(_Node(BOOL, fn, nodes[0].line, nodes[0].column),
                        "(" + joiner.join(f"{{{i}}}" for i in range(len(nodes))) + ")", *nodes)

    def _conditionalor(self, tree: lark.Tree, depth: int) -> _Node:
        return self._logic(tree, depth, is_and=False)

    def _conditionaland(self, tree: lark.Tree, depth: int) -> _Node:
        return self._logic(tree, depth, is_and=True)

    # -- relations
    def steps(self, tree: lark.Tree, depth: int, names: dict[str, str]) -> tuple[lark.Tree, list, int]:
        """A left-leaning chain `a op b op c` read without recursion: the first operand's tree, the (operator,
        its tree, right operand) steps in order, and the depth below (each operator nests a closure)."""
        steps = []
        while len(tree.children) == 2:
            op_tree = tree.children[0]
            steps.append((names[op_tree.data], op_tree, tree.children[1]))
            tree = op_tree.children[0]
        self.deep(depth + len(steps), tree)
        return tree.children[0], steps[::-1], depth + len(steps)

    def _relation(self, tree: lark.Tree, depth: int) -> _Node:
        first, steps, depth = self.steps(tree, depth, _RELATIONS)
        left = self.build(first, depth)
        for op, op_tree, right_tree in steps:
            right = self.build(right_tree, depth)  # may be lists.<name>, for `in`
            left = self.relation(op, self.standalone(left), right, _op_pos(op_tree, op))
        return left

    def relation(self, op: str, left: _Node, right: _Node, where: tuple[int, int]) -> _Node:
        x = left.fn
        if op == "in":
            return self.membership(left, right, where)
        self.standalone(right)
        y = right.fn
        if op in ("==", "!="):
            if not _comparable(left.type, right.type):
                raise self.error(f"cannot compare {left.type} {op} {right.type}", where)
            if left.type.kind in (CelType.LIST, CelType.MAP):
                fn = (lambda e, a, s, ls: _equal(x(e, a, s, ls), y(e, a, s, ls))) if op == "==" else (
                    lambda e, a, s, ls: not _equal(x(e, a, s, ls), y(e, a, s, ls)))
                return _fold(BOOL, fn, left.line, left.column, (left, right))
        elif not ((left.type in _NUMERIC and right.type in _NUMERIC) or (
                left.type == right.type and left.type in _ORDERED)):
            raise self.error(f"cannot order {left.type} {op} {right.type}", where)
        return self.gen(_fold(BOOL, _comparison(op, left, right), left.line, left.column, (left, right)),
                        f"({{0}} {op} {{1}})", left, right)

    def membership(self, left: _Node, right: _Node, where: tuple[int, int]) -> _Node:
        x = left.fn
        if right.special is not None and right.name is not None and right.type == _LISTS:  # lists.<name>
            if left.type != STRING:
                raise self.error(f"lists hold strings: {left.type} in lists.{right.name} never matches; "
                                 "convert with string()", where)
            name = right.name

            def in_named(e: Any, a: Any, s: Any, ls: Any) -> bool:
                value = x(e, a, s, ls)
                values = ls.get(name) if ls is not None else None
                return values is not None and value in values
            c = self.temp()
            return self.gen(_Node(BOOL, in_named, left.line, left.column),
                            f"({{0}} in ({c} if ({c} := ls.get({self.obj(name)})) is not None else ()))", left)
        self.standalone(right)
        kind = right.type.kind
        if kind is CelType.MAP:
            if not _comparable(left.type, right.type.key):  # type: ignore[arg-type]
                raise self.error(f"{left.type} in {right.type}: the key must be a {right.type.key}", where)
            y = right.fn
            return self.gen(_fold(BOOL, lambda e, a, s, ls: x(e, a, s, ls) in y(e, a, s, ls), left.line,
                                  left.column, (left, right)), "({0} in {1})", left, right)
        if kind is not CelType.LIST:
            raise self.error(f"`in` needs a list, a map or lists.<name> on its right, not {right.type}", where)
        if not _comparable(left.type, right.type.elem):  # type: ignore[arg-type]
            raise self.error(f"{left.type} in {right.type}: the types differ", where)
        if right.const is not _NO_CONST and right.type.elem in _HASHABLE and left.type in _HASHABLE:
            values = frozenset(right.const)
            if left.type == DOUBLE or right.type.elem == DOUBLE:  # NaN is a member of nothing
                t = self.temp()
                return self.gen(_fold(BOOL, lambda e, a, s, ls: (v := x(e, a, s, ls)) == v and v in values,
                                      left.line, left.column, (left, right)),
                                f"(({t} := {{0}}) == {t} and {t} in {self.obj(values)})", left)
            return self.gen(_fold(BOOL, lambda e, a, s, ls: x(e, a, s, ls) in values, left.line, left.column,
                                  (left, right)), f"({{0}} in {self.obj(values)})", left)
        y = right.fn
        return _fold(BOOL, lambda e, a, s, ls: _member(x(e, a, s, ls), y(e, a, s, ls)), left.line, left.column,
                     (left, right))

    # -- arithmetic
    def _arith_chain(self, tree: lark.Tree, depth: int, names: dict[str, str]) -> _Node:
        first, steps, depth = self.steps(tree, depth, names)
        left = self.sub(first, depth)
        for op, op_tree, right_tree in steps:
            left = self.arithmetic(op, left, self.sub(right_tree, depth), _op_pos(op_tree, op))
        return left

    def _addition(self, tree: lark.Tree, depth: int) -> _Node:
        return self._arith_chain(tree, depth, _ADDITIONS)

    def _multiplication(self, tree: lark.Tree, depth: int) -> _Node:
        return self._arith_chain(tree, depth, _MULTIPLICATIONS)

    def arithmetic(self, op: str, left: _Node, right: _Node, where: tuple[int, int]) -> _Node:
        lt, rt = left.type, right.type
        x, y = left.fn, right.fn
        if lt == rt and lt in _NUMERIC:
            operation = _ARITH.get((op, lt.kind))
            if operation is None:
                raise self.error(f"{op} is not defined for {lt} (only for int and uint)", where)
            if op == "+" and lt == INT and right.const is not _NO_CONST:  # the commonest: agg.count + 1
                c = right.const
                node = _fold(lt, lambda e, a, s, ls: _check_int(x(e, a, s, ls) + c), left.line, left.column,
                             (left, right))
            else:
                node = _fold(lt, lambda e, a, s, ls: operation(x(e, a, s, ls), y(e, a, s, ls)), left.line,
                             left.column, (left, right))
            if lt == DOUBLE:
                return self.gen(node, f"({{0}} {op} {{1}})", left, right)  # x / 0.0 raises: the closures decide
            if op in "+-*":
                low, high = (INT_MIN, INT_MAX) if lt == INT else (0, UINT_MAX)
                return self.checked(node, f"{self.code_of(left)} {op} {self.code_of(right)}", low, high)
            return node
        if op == "+" and lt == rt and lt == STRING:
            return self.gen(_fold(lt, lambda e, a, s, ls: x(e, a, s, ls) + y(e, a, s, ls), left.line, left.column,
                                  (left, right)), "({0} + {1})", left, right)
        if op == "+" and lt.kind is rt.kind is CelType.LIST:
            joined = _join(lt, rt)
            if joined is None:
                raise self.error(f"cannot concatenate {lt} and {rt}", where)
            return _fold(joined, lambda e, a, s, ls: x(e, a, s, ls) + y(e, a, s, ls), left.line, left.column,
                         (left, right))
        timed = _time_arith(op, lt, rt)
        if timed is not None:
            result, operation = timed
            return _fold(result, lambda e, a, s, ls: operation(x(e, a, s, ls), y(e, a, s, ls)), left.line,
                         left.column, (left, right))
        hint = ""
        if lt in _NUMERIC and rt in _NUMERIC:
            hint = ": CEL does not mix numeric types, convert one side (e.g. double(x) or int(x))"
        raise self.error(f"{op} is not defined for {lt} and {rt}{hint}", where)

    # -- unary
    def _unary(self, tree: lark.Tree, depth: int) -> _Node:
        ops = []
        while tree.data == "unary" and len(tree.children) == 2:
            ops.append(tree.children[0])
            tree = tree.children[1]
        self.deep(depth + len(ops), ops[-1])
        node = self.sub(tree, depth + len(ops))
        for op_tree in reversed(ops):
            if op_tree.data == "unary_not":
                if node.type != BOOL:
                    raise self.error(f"! needs a bool, not {node.type}", op_tree)
            elif node.type not in (INT, DOUBLE):
                raise self.error(f"- needs an int or a double, not {node.type}", op_tree)
            operand = node
            node = _fold(node.type, _unary_fn(op_tree.data, node), *_pos(op_tree), (node,))
            if op_tree.data == "unary_not":
                self.gen(node, "(not {0})", operand)
            elif node.type == DOUBLE:
                self.gen(node, "(-{0})", operand)
            else:
                self.checked(node, f"-{self.code_of(operand)}", INT_MIN, INT_MAX)
        return node

    # -- members
    def _member_dot(self, tree: lark.Tree, depth: int) -> _Node:
        operand_tree, field = tree.children
        name = str(field)
        root = self.root_name(operand_tree)
        if root == "event":
            found = _event_field(name)
            if found is None:
                raise self.error(f"event has no field {name!r} (fields: {', '.join(EVENT_FIELDS)})", field)
            type_, read, present, code, present_code = found
            node = self.reference(f"event.{name}", type_, read, present, tree)
            node.code, node.has_code = code, present_code
            return node
        if root == "agg":
            if name not in self.aggregates:
                known = ", ".join(self.aggregates) or "none are declared"
                raise self.error(f"unknown aggregate {name!r} (declared: {known})", field)
            index, type_ = self.aggregates[name]
            node = self.reference(f"agg.{name}", type_, lambda e, a, s, ls: a[index],
                                  lambda e, a, s, ls: a is not None and len(a) > index and a[index] is not None,
                                  tree)
            node.code = f"a[{index}]"
            self.bool_reads = self.bool_reads or type_ == BOOL
            return node
        if root == "lists":
            if name not in self.lists:
                known = ", ".join(sorted(self.lists)) or "none are declared"
                raise self.error(f"unknown list {name!r} (declared: {known})", field)
            node = _Node(_LISTS, lambda e, a, s, ls: None, *_pos(tree))
            node.special = f"lists.{name} can only stand on the right of `in` (e.g. event.ip in lists.{name})"
            node.name = name

            def size(e: Any, a: Any, s: Any, ls: Any) -> int | None:
                values = ls.get(name) if ls is not None else None
                return len(values) if hasattr(values, "__len__") else None  # type: ignore[arg-type]
            self.readers.setdefault(f"lists.{name}", size)
            return node
        if root == "math":
            raise self.error("math.* are functions: math.greatest(a, b), math.least(a, b), math.abs(x)", field)
        operand = self.sub(operand_tree, depth)
        if operand.type.kind is CelType.MAP:  # m.f is m["f"]
            key_node = _const(STRING, name, *_pos(field))
            node = self.index(operand, key_node, _pos(field))
            if operand.name is not None:
                getter, m = node.fn, operand.fn
                node = self.reference(f"{operand.name}.{name}", node.type, getter,
                                      lambda e, a, s, ls: name in m(e, a, s, ls), tree, record=operand.name)
            else:
                m = operand.fn
                node.has = lambda e, a, s, ls: name in m(e, a, s, ls)
            return node
        raise self.error(f"{operand.type} has no fields", field)

    def reference(self, dotted: str, type_: _Type, read: Fn, present: Fn, where: Any,
                  record: str | None = None) -> _Node:
        """A node reading a named value; `record` replaces the reference it builds on (event.features.V1 is
        shown instead of event.features when only that key is read)."""
        node = _Node(type_, read, *_pos(where))
        node.name, node.has = dotted, present
        if record is not None:
            self.uses[record] -= 1
        self.readers.setdefault(dotted, read)
        self.uses[dotted] = self.uses.get(dotted, 0) + 1
        return node

    def references(self) -> dict[str, Fn]:
        return {name: read for name, read in self.readers.items() if self.uses.get(name, 1) > 0}

    def root_name(self, tree: lark.Tree) -> str | None:
        """The identifier `tree` is, when it is a bare identifier (event, agg, lists, math), else None."""
        while isinstance(tree, lark.Tree) and tree.data in _PASS and len(tree.children) == 1:
            tree = tree.children[0]
        if isinstance(tree, lark.Tree) and tree.data == "ident":
            name = str(tree.children[0])
            if name in ("event", "agg", "lists", "math"):
                return name
        return None

    def _member_index(self, tree: lark.Tree, depth: int) -> _Node:
        operand = self.sub(tree.children[0], depth)
        key = self.sub(tree.children[1], depth)
        node = self.index(operand, key, _pos(tree.children[1]))
        if operand.name is not None and key.const is not _NO_CONST and isinstance(key.const, str):
            m, k = operand.fn, key.const
            shown = f"{operand.name}.{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else \
                f"{operand.name}[{k!r}]"
            node = self.reference(shown, node.type, node.fn, lambda e, a, s, ls: k in m(e, a, s, ls), tree,
                                  record=operand.name)
        return node

    def index(self, operand: _Node, key: _Node, where: tuple[int, int]) -> _Node:
        m, k = operand.fn, key.fn
        if operand.type.kind is CelType.MAP:
            if not _comparable(key.type, operand.type.key):  # type: ignore[arg-type]
                raise self.error(f"the key of {operand.type} must be a {operand.type.key}, not {key.type}", where)

            def lookup(e: Any, a: Any, s: Any, ls: Any) -> Any:
                mapping, wanted = m(e, a, s, ls), k(e, a, s, ls)
                try:
                    return mapping[wanted]
                except KeyError:
                    raise EvalError(f"no such key: {str(wanted)[:64]!r}") from None
            return self.gen(_fold(operand.type.elem, lookup, operand.line, operand.column, (operand, key)),  # type: ignore
                            "{0}[{1}]", operand, key)
        if operand.type.kind is CelType.LIST:
            if key.type not in (INT, UINT):
                raise self.error(f"a list index must be an int, not {key.type}", where)

            def item(e: Any, a: Any, s: Any, ls: Any) -> Any:
                values, i = m(e, a, s, ls), k(e, a, s, ls)
                if not 0 <= i < len(values):
                    raise EvalError(f"index {i} out of range (the list has {len(values)} items)")
                return values[i]
            return _fold(operand.type.elem, item, operand.line, operand.column, (operand, key))  # type: ignore
        raise self.error(f"{operand.type} cannot be indexed", where)

    def _member_dot_arg(self, tree: lark.Tree, depth: int) -> _Node:
        operand_tree, name_token = tree.children[0], tree.children[1]
        name = str(name_token)
        args_tree = tree.children[2] if len(tree.children) > 2 else None
        arg_trees = list(args_tree.children) if args_tree is not None else []
        if self.root_name(operand_tree) == "math":
            return self.math(name, [self.sub(arg, depth) for arg in arg_trees], name_token)
        if name in ("all", "exists", "exists_one", "map", "filter"):
            raise self.error(f"the {name}() macro is not supported", name_token)
        receiver = self.sub(operand_tree, depth)
        args = [self.sub(arg, depth) for arg in arg_trees]
        return self.method(name, receiver, args, name_token)

    def method(self, name: str, receiver: _Node, args: list[_Node], where: Any) -> _Node:
        r = receiver.fn
        kind = receiver.type.kind
        if name in ("startsWith", "endsWith", "contains", "matches"):
            if kind is not CelType.STRING or len(args) != 1 or args[0].type != STRING:
                raise self.error(f"{name} is string.{name}(string)", where)
            if name == "matches":
                return self.matches(receiver, args[0])
            y = args[0].fn
            if name == "startsWith":
                fn, code = (lambda e, a, s, ls: r(e, a, s, ls).startswith(y(e, a, s, ls))), "{0}.startswith({1})"
            elif name == "endsWith":
                fn, code = (lambda e, a, s, ls: r(e, a, s, ls).endswith(y(e, a, s, ls))), "{0}.endswith({1})"
            else:
                fn, code = (lambda e, a, s, ls: y(e, a, s, ls) in r(e, a, s, ls)), "({1} in {0})"
            return self.gen(_fold(BOOL, fn, receiver.line, receiver.column, (receiver, args[0])), code, receiver,
                            args[0])
        if name == "size" and not args:
            return self.size(receiver, where)
        getters = _TIMESTAMP_GETTERS if kind is CelType.TIMESTAMP else (
            _DURATION_GETTERS if kind is CelType.DURATION else {})
        if name in getters:
            if args:
                raise self.error(f"{name}() takes no time zone here: times are UTC", where)
            getter = getters[name]
            return _fold(INT, lambda e, a, s, ls: getter(r(e, a, s, ls)), receiver.line, receiver.column, (receiver,))
        raise self.error(f"{receiver.type} has no method {name}()", where)

    def matches(self, text: _Node, pattern: _Node) -> _Node:
        if pattern.const is _NO_CONST:
            raise self.error("the pattern of matches() must be a string literal", pattern)
        try:
            compiled = translate_re2(pattern.const)
        except ValueError as exc:
            raise self.error(f"matches(): {exc}", pattern) from None
        search, x = compiled.search, text.fn
        return self.gen(_fold(BOOL, lambda e, a, s, ls: search(x(e, a, s, ls)) is not None, text.line, text.column,
                              (text, pattern)), f"({self.obj(search)}({{0}}) is not None)", text)

    def size(self, node: _Node, where: Any) -> _Node:
        if node.type.kind not in (CelType.STRING, CelType.LIST, CelType.MAP):
            raise self.error(f"size() takes a string, a list or a map, not {node.type}", where)
        x = node.fn
        return self.gen(_fold(INT, lambda e, a, s, ls: len(x(e, a, s, ls)), node.line, node.column, (node,)),
                        "len({0})", node)

    def math(self, name: str, args: list[_Node], where: Any) -> _Node:
        if name == "abs":
            if len(args) != 1 or args[0].type not in _NUMERIC:
                raise self.error("math.abs takes one int, uint or double", where)
            x, check = args[0].fn, _CHECK.get(args[0].type.kind, lambda v: v)
            return _fold(args[0].type, lambda e, a, s, ls: check(abs(x(e, a, s, ls))), *_pos(where), args)
        if name not in ("greatest", "least"):
            raise self.error(f"unknown function math.{name} (math.greatest, math.least, math.abs)", where)
        pick = max if name == "greatest" else min
        if len(args) == 1 and args[0].type.kind is CelType.LIST:
            elem = args[0].type.elem
            if elem not in _NUMERIC:
                raise self.error(f"math.{name} takes numbers, not {args[0].type}", where)
            x = args[0].fn

            def over_list(e: Any, a: Any, s: Any, ls: Any) -> Any:
                values = x(e, a, s, ls)
                if not values:
                    raise EvalError(f"math.{name}([]): the list is empty")
                return _pick(pick, values)
            return _fold(elem, over_list, *_pos(where), args)  # type: ignore[arg-type]
        if not args or any(arg.type not in _NUMERIC for arg in args) or len({arg.type for arg in args}) > 1:
            raise self.error(f"math.{name} takes numbers of one type (or a list of them); convert with double()",
                             where)
        fns = [arg.fn for arg in args]
        return _fold(args[0].type, lambda e, a, s, ls: _pick(pick, [f(e, a, s, ls) for f in fns]), *_pos(where), args)

    # -- primaries
    def _ident_arg(self, tree: lark.Tree, depth: int) -> _Node:
        name_token = tree.children[0]
        name = str(name_token)
        arg_trees = list(tree.children[1].children) if len(tree.children) > 1 else []
        if name == "has":
            return self.has(arg_trees, name_token, depth)
        args = [self.sub(arg, depth) for arg in arg_trees]
        if name in _CONVERSIONS:
            accepted, result, convert = _CONVERSIONS[name]
            if len(args) != 1 or args[0].type.kind not in accepted:
                shown = ", ".join(str(arg.type) for arg in args)
                raise self.error(f"{name}({shown}) is not defined: {name}() takes "
                                 f"{' or '.join(sorted(k.value for k in accepted))}", name_token)
            arg = args[0]
            if name == "duration" and arg.const is not _NO_CONST and arg.type == STRING:
                try:
                    return _const(DURATION, parse_duration(arg.const), *_pos(name_token))
                except ValueError as exc:
                    raise self.error(str(exc), arg) from None
            if name == "timestamp" and arg.const is not _NO_CONST and arg.type == STRING:
                try:
                    return _const(TIMESTAMP, parse_timestamp(arg.const), *_pos(name_token))
                except ValueError as exc:
                    raise self.error(str(exc), arg) from None
            x, source = arg.fn, arg.type
            return _fold(result, lambda e, a, s, ls: convert(x(e, a, s, ls), source), *_pos(name_token), (arg,))
        if name == "size" and len(args) == 1:
            return self.size(args[0], name_token)
        if name == "matches" and len(args) == 2:
            if args[0].type != STRING or args[1].type != STRING:
                raise self.error("matches takes (string, string)", name_token)
            return self.matches(args[0], args[1])
        if name in ("startsWith", "endsWith", "contains") and len(args) == 2:
            return self.method(name, args[0], args[1:], name_token)
        if name in ("dyn", "type", "bool", "bytes"):
            raise self.error(f"{name}() is not supported", name_token)
        raise self.error(f"unknown function {name}()", name_token)

    def has(self, arg_trees: list[lark.Tree], where: Any, depth: int) -> _Node:
        if len(arg_trees) != 1:
            raise self.error("has() takes one field selection, e.g. has(event.counterparty_id)", where)
        target = arg_trees[0]
        while target.data in _PASS and len(target.children) == 1 and isinstance(target.children[0], lark.Tree):
            target = target.children[0]
        if target.data != "member_dot":
            raise self.error("has() takes a field selection, e.g. has(event.counterparty_id)", target)
        node = self.build(target, depth)
        if node.has is None:
            raise self.error("has() takes a field of event, agg or a map", target)
        result = _Node(BOOL, node.has, *_pos(where))
        result.code = node.has_code
        return result

    def _ident(self, tree: lark.Tree, depth: int) -> _Node:
        token = tree.children[0]
        name = str(token)
        if name == "score":
            self.readers.setdefault("score", _read_score)
            node = _Node(DOUBLE, _read_score, *_pos(token))
            node.name = "score"
            node.code = f"(s if s is not None else {self.obj(_read_score)}(e, a, s, ls))"
            return node
        if name in ("event", "agg", "lists"):
            example = {"event": "event.amount", "agg": "agg.<name>", "lists": "event.ip in lists.<name>"}[name]
            node = _Node(DYN, None, *_pos(token))
            node.special = f"{name} cannot be used on its own: select a field, e.g. {example}"
            return node
        if name in ("int", "uint", "double", "string", "bool", "bytes", "list", "map", "null_type", "type",
                    "timestamp", "duration", "dyn"):
            raise self.error(f"type values ({name}) are not supported", token)
        raise self.error(f"unknown name {name!r}: an expression reads event.<field>, score, agg.<name> and "
                         "lists.<name>", token)

    def _literal(self, tree: lark.Tree, depth: int) -> _Node:
        token = tree.children[0]
        text, where = str(token), _pos(token)
        kind = token.type
        if kind == "INT_LIT":
            negative = text.startswith("-")
            body = text[1:] if negative else text
            value = int(body[2:], 16) if body[:2].lower() == "0x" else int(body, 10)
            value = -value if negative else value
            if not INT_MIN <= value <= INT_MAX:
                raise self.error(f"integer literal {text} is outside the 64-bit range", token)
            return _const(INT, value, *where)
        if kind == "UINT_LIT":
            body = text[:-1]
            value = int(body[2:], 16) if body[:2].lower() == "0x" else int(body, 10)
            if body.startswith("-") or not 0 <= value <= UINT_MAX:
                raise self.error(f"unsigned literal {text} is outside the uint range", token)
            return _const(UINT, value, *where)
        if kind == "FLOAT_LIT":
            value = float(text)
            if math.isinf(value):
                raise self.error(f"double literal {text} is outside the double range", token)
            return _const(DOUBLE, value, *where)
        if kind in ("STRING_LIT", "MLSTRING_LIT"):
            try:
                return _const(STRING, _string_literal(token), *where)
            except ValueError as exc:
                raise self.error(f"string literal: {exc}", token) from None
        if kind == "BOOL_LIT":
            return _const(BOOL, text == "true", *where)
        if kind == "NULL_LIT":
            raise self.error("null is not supported: absent event fields read as \"\" or 0; test them with "
                             "has(event.<field>)", token)
        raise self.error(f"{kind.lower().replace('_lit', '')} literals are not supported", token)

    def _paren_expr(self, tree: lark.Tree, depth: int) -> _Node:
        return self.sub(tree.children[0], depth)

    def _list_lit(self, tree: lark.Tree, depth: int) -> _Node:
        items = [self.sub(child, depth) for child in tree.children[0].children] if tree.children else []
        elem = DYN
        for item in items:
            joined = _join(elem, item.type)
            if joined is None:
                raise self.error(f"a list holds values of one type: {item.type} after {elem}", item)
            elem = joined
        line, column = _pos(tree)
        if all(item.const is not _NO_CONST for item in items):
            return _const(_list_of(elem), [item.const for item in items], line, column)
        fns = [item.fn for item in items]
        return _Node(_list_of(elem), lambda e, a, s, ls: [f(e, a, s, ls) for f in fns], line, column)

    def _map_lit(self, tree: lark.Tree, depth: int) -> _Node:
        raise self.error("map literals {...} are not supported", tree)

    def _member_object(self, tree: lark.Tree, depth: int) -> _Node:
        raise self.error("message construction T{...} is not supported", tree)

    def _dot_ident(self, tree: lark.Tree, depth: int) -> _Node:
        raise self.error("a leading . (root scope) is not supported", tree)

    _dot_ident_arg = _dot_ident


def _pick(pick: Callable[..., Any], values: list) -> Any:
    if any(v != v for v in values):  # NaN wins, as in cel-go's math extension
        return math.nan
    return pick(values)


def _and(x: Fn, y: Fn) -> Fn:
    """CEL's &&: false if either side is false, even when the other side fails."""
    def fn(e: Any, a: Any, s: Any, ls: Any) -> bool:
        try:
            left = x(e, a, s, ls)
        except Exception:
            if not y(e, a, s, ls):
                return False
            raise
        return y(e, a, s, ls) if left else False
    return fn


def _or(x: Fn, y: Fn) -> Fn:
    """CEL's ||: true if either side is true, even when the other side fails."""
    def fn(e: Any, a: Any, s: Any, ls: Any) -> bool:
        try:
            left = x(e, a, s, ls)
        except Exception:
            if y(e, a, s, ls):
                return True
            raise
        return True if left else y(e, a, s, ls)
    return fn


def _raise_overflow() -> None:
    raise EvalError("integer overflow: the result is outside the 64-bit range")


def _guarded(fn: Fn, is_bool: bool) -> Fn:
    """`fn`, raising EvalError for whatever else goes wrong on odd data (and for a condition that is no bool)."""
    def guarded(e: Any, a: Any, s: Any, ls: Any) -> Any:
        try:
            result = fn(e, a, s, ls)
        except EvalError:
            raise
        except Exception as exc:  # a value of an unexpected type in the event or the state
            raise EvalError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if is_bool and result is not True and result is not False:
            raise EvalError(f"the condition gave {type(result).__name__}, not a bool: the state or the event "
                            "holds a value of an unexpected type")
        return result
    return guarded


def _unary_fn(op: str, node: _Node) -> Fn:
    x = node.fn
    if op == "unary_not":
        return lambda e, a, s, ls: not x(e, a, s, ls)
    if node.type == INT:
        return lambda e, a, s, ls: _check_int(-x(e, a, s, ls))
    return lambda e, a, s, ls: -x(e, a, s, ls)


def _all(fns: list[Fn]) -> Fn:
    """CEL's a && b && c ...: false if any operand is false, else the first error, else true."""
    def fn(e: Any, a: Any, s: Any, ls: Any) -> bool:
        error = None
        for f in fns:
            try:
                if not f(e, a, s, ls):
                    return False
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return True
    return fn


def _any(fns: list[Fn]) -> Fn:
    """CEL's a || b || c ...: true if any operand is true, else the first error, else false."""
    def fn(e: Any, a: Any, s: Any, ls: Any) -> bool:
        error = None
        for f in fns:
            try:
                if f(e, a, s, ls):
                    return True
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return False
    return fn


def _comparison(op: str, left: _Node, right: _Node) -> Fn:
    """The closure of `left op right`, with a constant side bound as a value (one call fewer)."""
    x, y = left.fn, right.fn
    if right.const is not _NO_CONST:
        c = right.const
        if op == ">":
            return lambda e, a, s, ls: x(e, a, s, ls) > c
        if op == ">=":
            return lambda e, a, s, ls: x(e, a, s, ls) >= c
        if op == "<":
            return lambda e, a, s, ls: x(e, a, s, ls) < c
        if op == "<=":
            return lambda e, a, s, ls: x(e, a, s, ls) <= c
        if op == "==":
            return lambda e, a, s, ls: x(e, a, s, ls) == c
        return lambda e, a, s, ls: x(e, a, s, ls) != c
    if op == ">":
        return lambda e, a, s, ls: x(e, a, s, ls) > y(e, a, s, ls)
    if op == ">=":
        return lambda e, a, s, ls: x(e, a, s, ls) >= y(e, a, s, ls)
    if op == "<":
        return lambda e, a, s, ls: x(e, a, s, ls) < y(e, a, s, ls)
    if op == "<=":
        return lambda e, a, s, ls: x(e, a, s, ls) <= y(e, a, s, ls)
    if op == "==":
        return lambda e, a, s, ls: x(e, a, s, ls) == y(e, a, s, ls)
    return lambda e, a, s, ls: x(e, a, s, ls) != y(e, a, s, ls)
