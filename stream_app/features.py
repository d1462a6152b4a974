"""Feature vectors from events, defined once for the trainer and the worker (numpy only, no TensorFlow).

The model card's ordered `feature_names` decides what `vectorize` computes, so serving always builds exactly
the vector the model was trained on. Built-in names are stateless functions of one event (see `BUILTIN`);
any other name is read from the event's precomputed `features` (e.g. `V1`..`V28` of the card-holder data).

Explanations speak of fields, not encodings: each feature belongs to one analyst-facing field (`field_of`:
`hour_sin` and `hour_cos` to `hour`, the one-hot `channel_*` to `channel`, ...; a precomputed feature is its own
field), whose raw value `field_values` reads from the event and whose normal range `normal_ranges` measures on
the training rows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from fraudmon.core.errors import FeatureError
from fraudmon.core.events import CHANNELS, Event

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday = 0

# A small fixed grouping of ISO 18245 merchant category codes (first matching group wins; else `other`).
MCC_GROUPS: dict[str, tuple[tuple[int, int], ...]] = {
    "grocery": ((5411, 5411), (5422, 5499)),
    "dining": ((5811, 5814),),
    "travel": ((3000, 3999), (4011, 4131), (4411, 4411), (4511, 4511), (4722, 4722), (7011, 7011),
               (7512, 7512)),
    "fuel": ((5541, 5542), (5983, 5983)),
    "high_value": ((5094, 5094), (5732, 5732), (5944, 5944)),  # electronics, jewellery: resold easily
    "digital": ((4814, 4816), (4899, 4899), (5733, 5735), (5815, 5818), (7372, 7372)),
    "cash": ((4829, 4829), (6010, 6012), (6050, 6051), (6211, 6211), (6540, 6540), (7995, 7995)),
    "retail": ((5200, 5399), (5600, 5999)),
}
MCC_GROUP_NAMES = (*MCC_GROUPS, "other")


_EURO = ("AT", "BE", "CY", "DE", "EE", "ES", "FI", "FR", "GR", "HR", "IE", "IT", "LT", "LU", "LV", "MT", "NL",
         "PT", "SI", "SK")
COUNTRY_CURRENCY: dict[str, str] = {
    **dict.fromkeys(_EURO, "EUR"),
    "GB": "GBP", "US": "USD", "CH": "CHF", "SE": "SEK", "DK": "DKK", "NO": "NOK", "CZ": "CZK", "PL": "PLN",
    "HU": "HUF", "RO": "RON", "BG": "BGN", "CA": "CAD", "AU": "AUD", "JP": "JPY", "CN": "CNY", "IN": "INR",
    "BR": "BRL", "MX": "MXN", "NG": "NGN", "ZA": "ZAR", "VN": "VND", "ID": "IDR", "PH": "PHP", "TH": "THB",
    "TR": "TRY",
}
"""Local currency per country, for `currency_foreign` (unlisted countries count as not foreign)."""


@lru_cache(maxsize=4096)
def mcc_group(code: str | None) -> str:
    """The group of a merchant category code (`other` when missing, non-numeric or not grouped)."""
    if not code or not code.isdigit():
        return "other"
    value = int(code)
    for group, ranges in MCC_GROUPS.items():
        if any(low <= value <= high for low, high in ranges):
            return group
    return "other"


class _Columns:
    """Per-batch raw columns, each extracted from the events once and shared by the features using it."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self._cache: dict[str, np.ndarray | list] = {}

    def _get(self, key: str, build: Callable[[], np.ndarray | list]) -> np.ndarray | list:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def amount(self) -> np.ndarray:
        return self._get("amount", lambda: np.fromiter((e.amount for e in self.events), np.float64,
                                                       len(self.events)))

    def timestamp_ms(self) -> np.ndarray:
        return self._get("ts", lambda: np.fromiter((e.timestamp_ms for e in self.events), np.int64,
                                                   len(self.events)))

    def hour(self) -> np.ndarray:
        return self._get("hour", lambda: (self.timestamp_ms() % MS_PER_DAY) / MS_PER_HOUR)

    def weekday(self) -> np.ndarray:
        return self._get("dow", lambda: (self.timestamp_ms() // MS_PER_DAY + EPOCH_WEEKDAY) % 7)

    def channel(self) -> list:
        return self._get("channel", lambda: [e.channel for e in self.events])

    def mcc_group(self) -> list:
        return self._get("mcc", lambda: [mcc_group(e.merchant_category) for e in self.events])

    def age_days(self) -> np.ndarray:
        """Account age in days at the event; NaN when the event has no `account_created_ms`."""
        def build() -> np.ndarray:
            created = np.array([np.nan if e.account_created_ms is None else e.account_created_ms
                                for e in self.events], dtype=np.float64)
            return np.maximum(self.timestamp_ms() - created, 0.0) / MS_PER_DAY
        return self._get("age", build)

    def present(self, attribute: str) -> np.ndarray:
        return self._get(f"has:{attribute}", lambda: np.fromiter(
            (getattr(e, attribute) is not None for e in self.events), np.float64, len(self.events)))


_CATEGORIES: dict[str, Callable[[_Columns], list]] = {"channel": _Columns.channel, "mcc": _Columns.mcc_group}
"""The categorical columns that one-hot features encode, by family (the feature name's prefix)."""


def _one_hot(c: _Columns, family: str, targets: tuple[str | None, ...]) -> np.ndarray:
    """`[n, len(targets)]`: 1.0 where the event's `family` value is that target (a missing channel is None)."""
    index = {target: k for k, target in enumerate(targets)}
    values = _CATEGORIES[family](c)
    codes = np.fromiter((index.get(value, -1) for value in values), np.intp, len(values))
    return (codes[:, None] == np.arange(len(targets))).astype(np.float64)


def _currency_foreign(c: _Columns) -> np.ndarray:
    local = COUNTRY_CURRENCY.get
    return np.fromiter(
        (e.currency is not None and local(e.country or "", e.currency) != e.currency for e in c.events),
        np.float64, len(c.events),
    )


def _amount_round(c: _Columns) -> np.ndarray:
    amount = c.amount()
    return ((amount >= 10) & (np.mod(amount, 10) == 0)).astype(np.float64)


ONE_HOT: dict[str, tuple[str, str | None]] = {
    **{f"channel_{name}": ("channel", name) for name in CHANNELS}, "channel_missing": ("channel", None),
    **{f"mcc_{group}": ("mcc", group) for group in MCC_GROUP_NAMES},
}
"""One-hot features: their family and the value they flag."""

BUILTIN: dict[str, Callable[[_Columns], np.ndarray]] = {
    "amount_log": lambda c: np.log1p(c.amount()),
    "amount_round": _amount_round,
    "hour_sin": lambda c: np.sin(2 * np.pi * c.hour() / 24),
    "hour_cos": lambda c: np.cos(2 * np.pi * c.hour() / 24),
    "dow_sin": lambda c: np.sin(2 * np.pi * c.weekday() / 7),
    "dow_cos": lambda c: np.cos(2 * np.pi * c.weekday() / 7),
    **{name: (lambda c, family=family, target=target: _one_hot(c, family, (target,))[:, 0])
       for name, (family, target) in ONE_HOT.items()},
    "currency_foreign": _currency_foreign,
    "has_counterparty": lambda c: c.present("counterparty_id"),
    "has_device": lambda c: c.present("device_id"),
    "has_ip": lambda c: c.present("ip"),
    "account_age_days_log": lambda c: np.nan_to_num(np.log1p(c.age_days()), nan=0.0),
    "account_age_missing": lambda c: np.isnan(c.age_days()).astype(np.float64),
}
"""Built-in stateless features, by name."""

EVENT_FEATURES: tuple[str, ...] = (
    "amount_log", "amount_round", "hour_sin", "hour_cos", "dow_sin", "dow_cos",
    *(f"channel_{name}" for name in (*CHANNELS, "missing")),
    *(f"mcc_{group}" for group in MCC_GROUP_NAMES),
    "currency_foreign", "has_counterparty", "has_device", "has_ip", "account_age_days_log", "account_age_missing",
)
"""The default feature set for the project's own events."""


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def default_feature_names(events: Sequence[Event]) -> list[str]:
    """`V1..V28 + amount_log` style when every event carries precomputed `features`, else `EVENT_FEATURES`."""
    if events and all(e.features for e in events):
        shared = set(events[0].features)
        for event in events:
            shared &= event.features.keys()
        passthrough = sorted(shared - BUILTIN.keys(), key=_natural_key)
        if passthrough:
            return [*passthrough, "amount_log"]
    return list(EVENT_FEATURES)


def _passthrough(events: Sequence[Event], name: str) -> np.ndarray:
    try:
        return np.fromiter((e.features[name] for e in events), np.float64, len(events))
    except KeyError:
        missing = next(e for e in events if name not in e.features)
        if not any(name in e.features for e in events):
            raise FeatureError(
                f"unknown feature {name!r}: not a built-in feature ({', '.join(BUILTIN)}) and not in the "
                f"events' `features` (e.g. transaction {missing.transaction_id})"
            ) from None
        raise FeatureError(
            f"transaction {missing.transaction_id} has no features.{name}, which the model needs"
        ) from None


def vectorize(events: Sequence[Event], feature_names: Sequence[str]) -> np.ndarray:
    """The float32 matrix `[len(events), len(feature_names)]`, columns in `feature_names` order."""
    out = np.empty((len(events), len(feature_names)), dtype=np.float32)
    columns = _Columns(events)
    for start, stop, family, targets in _plan(tuple(feature_names)):
        if family is not None:  # adjacent one-hot features of one family: one block for the batch
            out[:, start:stop] = _one_hot(columns, family, targets)
            continue
        name = feature_names[start]
        builtin = BUILTIN.get(name)
        out[:, start] = builtin(columns) if builtin is not None else _passthrough(events, name)
    return out


@lru_cache(maxsize=64)
def _plan(feature_names: tuple[str, ...]) -> list[tuple[int, int, str | None, tuple]]:
    """`vectorize`'s steps: `(start, stop, family, targets)` for a run of one-hot features of one family,
    `(j, j + 1, None, ())` for any other feature."""
    steps: list[tuple[int, int, str | None, tuple]] = []
    for j, name in enumerate(feature_names):
        family, target = ONE_HOT.get(name, (None, None))
        if family is not None and steps and steps[-1][2] == family and target not in steps[-1][3]:
            start, _, _, targets = steps.pop()
            steps.append((start, j + 1, family, (*targets, target)))
        else:
            steps.append((j, j + 1, family, () if family is None else (target,)))
    return steps


# ---- fields: what an analyst reads in an explanation -----------------------------------------------------------

FieldKind = Literal["number", "hour", "weekday", "category"]
_FIELD_OF: dict[str, str] = {
    "amount_log": "amount", "amount_round": "amount", "hour_sin": "hour", "hour_cos": "hour",
    "dow_sin": "weekday", "dow_cos": "weekday", "account_age_days_log": "account_age_days",
    "account_age_missing": "account_age_days",
    **{f"channel_{name}": "channel" for name in (*CHANNELS, "missing")},
    **{f"mcc_{group}": "mcc_group" for group in MCC_GROUP_NAMES},
}
FIELD_KINDS: dict[str, FieldKind] = {"hour": "hour", "weekday": "weekday", "channel": "category",
                                     "mcc_group": "category"}
"""How a field's normal range reads: numbers as [low, high], hour (0-23) and weekday (0 = Monday) as a window
that may wrap around, categories as the values seen in training. Fields not listed are numbers."""
_FIELD_VALUES: dict[str, Callable[[_Columns], np.ndarray | list]] = {
    "amount": lambda c: c.amount(),
    "hour": lambda c: c.hour(),
    "weekday": lambda c: c.weekday().astype(np.float64),
    "channel": lambda c: [value or "missing" for value in c.channel()],
    "mcc_group": lambda c: c.mcc_group(),
    "account_age_days": lambda c: c.age_days(),
}
NORMAL_COVERAGE = (1.0, 99.0)
"""Normal ranges span the training rows' 1st to 99th percentile (the window or the categories holding 98%)."""
_PERIODS = {"hour": 24, "weekday": 7}


def field_of(name: str) -> str:
    """The field a feature explains: `hour_sin` → `hour`; a precomputed or stand-alone feature is its own."""
    return _FIELD_OF.get(name, name)


def fields_of(feature_names: Sequence[str]) -> dict[str, list[str]]:
    """Each field of a feature list with its features, in the order the fields first appear."""
    fields: dict[str, list[str]] = {}
    for name in feature_names:
        fields.setdefault(field_of(name), []).append(name)
    return fields


def field_values(events: Sequence[Event], field: str) -> np.ndarray | list:
    """The field's raw value for each event (amount, hour of day, channel, ...); a field that is one feature
    gives that feature's value (NaN where an event lacks a precomputed one)."""
    return field_reader(events)(field)


def field_reader(events: Sequence[Event]) -> Callable[[str], np.ndarray | list]:
    """`field_values` of one batch for any field, each raw column extracted from the events once."""
    columns = _Columns(events)

    def read(field: str) -> np.ndarray | list:
        if field in _FIELD_VALUES:
            return _FIELD_VALUES[field](columns)
        if field in BUILTIN:
            return BUILTIN[field](columns)
        return np.fromiter((e.features.get(field, np.nan) for e in events), np.float64, len(events))

    return read


def _circular_window(values: np.ndarray, period: int, share: float) -> list[float]:
    """The shortest run of whole units (hours, weekdays), wrapping around, that holds `share` of `values`."""
    counts = np.bincount(np.floor(values).astype(int) % period, minlength=period)
    needed = share * counts.sum()
    for width in range(1, period + 1):
        sums = [counts[np.arange(start, start + width) % period].sum() for start in range(period)]
        best = int(np.argmax(sums))
        if sums[best] >= needed:
            return [float(best), float((best + width - 1) % period)]
    return [0.0, float(period - 1)]


def normal_range(values: np.ndarray | list, kind: FieldKind) -> list[Any] | None:
    """The normal range of a field's training values (see `NORMAL_COVERAGE`); None when none is known."""
    low, high = NORMAL_COVERAGE
    if kind == "category":
        counts = Counter(values)
        total = sum(counts.values())
        return [name for name, n in counts.most_common() if n / max(total, 1) * 100 >= low] or None
    numbers = np.asarray(values, dtype=np.float64)
    numbers = numbers[np.isfinite(numbers)]
    if numbers.size == 0:
        return None
    if kind in _PERIODS:
        return _circular_window(numbers, _PERIODS[kind], (high - low) / 100)
    return [round(float(v), 4) for v in np.percentile(numbers, [low, high])]


def normal_ranges(events: Sequence[Event], feature_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per field of the model: its features, kind and the normal range of `events` (the training rows)."""
    out = {}
    for field, names in fields_of(feature_names).items():
        kind = FIELD_KINDS.get(field, "number")
        out[field] = {"features": names, "kind": kind, "normal": normal_range(field_values(events, field), kind)}
    return out
