"""Whether a model fits the traffic it scores, said in one sentence when it does not.

A model trained on other data scores every event, and its scores mean nothing: the simulator's model flags every
row of the card-holder CSV (it has no channel, merchant or account age), and the card-holder model cannot score a
simulated event (it has no `features.V1`). Two checks, for every place a model meets traffic (replay, promote's
gate, the worker's reload and shadow, evaluate):

- `events_problem(model, events)`, before scoring: most events lack the precomputed features the model reads, or
  one of its fields lies outside the range seen in training in most events;
- `scores_problem(model, scores)`, after scoring: the model flags far more events than its card expects.

Both return None when the model fits, else the reason, naming the model and what to do.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fraudmon.core.events import Event
from stream_app.drift import CLOCK_KINDS
from stream_app.features import BUILTIN, field_values
from stream_app.scoring import Judged, OnnxModel, outside_normal

MIN_EVENTS = 200
"""Events needed before a field's share outside its range is judged. A field's normal range holds 98% of the
training rows (1st to 99th percentile, or the window and categories holding 98%), so about 2% of fitting events
lie outside it; more than half of 200 doing so has a probability below 1e-100 for traffic like the training
data. Fewer events (a burst of one merchant's sales) may be unusual without the model being wrong."""
MOST = 0.5
"""A field outside its range in more than this share of the events does not fit (25 times the 2% of training)."""
MIN_SCORED = 200
"""Scores needed before the alert rate is judged: at a card's usual 0.5%, one flag is expected in 200, and 40 (the
least `scores_problem` calls unfit) has a probability below 1e-30."""
FAR_ABOVE = 20.0
UNFIT_ALERT_RATE = 0.2
MAX_UNFIT_ALERT_RATE = 0.5
"""A model flags far more than its card expects when its alert rate exceeds `FAR_ABOVE` times the card's
`expected_alert_rate` (the share of normal validation rows over the threshold) and at least `UNFIT_ALERT_RATE`
(at most `MAX_UNFIT_ALERT_RATE`, for cards that expect a high rate). Traffic that fits gives about the card's
rate plus its frauds: a labelled backtest with 5% fraud flags some 5.5%, a fraud wave does not make a fifth of
all traffic; a model for other data flags most of it (the simulator's model: 9,528 of 9,528 card-holder rows)."""
SHOWN = 4  # names shown in a reason


def passthrough_features(model: OnnxModel) -> list[str]:
    """The model's features that events must carry in `features` (the others are computed from the event)."""
    return [name for name in model.feature_names if name not in BUILTIN]


def missing_features_problem(model: OnnxModel, events: Sequence[Event]) -> str | None:
    """Why `model` does not fit `events` (most of them lack features it needs), or None when it fits."""
    needed = passthrough_features(model)
    if not needed or not events:
        return None
    lacking = [e for e in events if any(name not in e.features for name in needed)]
    if len(lacking) * 2 <= len(events):
        return None
    example = next(name for name in needed if name not in lacking[0].features)
    return (f"model {model.name} ({model.version}) needs {len(needed)} precomputed features "
            f"({', '.join(needed[:4])}{', ...' if len(needed) > 4 else ''}) in each event's `features`; "
            f"{len(lacking)} of the last {len(events)} events lack some (e.g. {lacking[0].transaction_id} has no "
            f"features.{example}): serve a model trained on these events, or send the features")


def events_problem(model: OnnxModel, events: Sequence[Event]) -> str | None:
    """Why `model` does not fit `events` (None: it does): most events lack the precomputed features it reads
    (`missing_features_problem`, whatever their number), or, on at least `MIN_EVENTS` events, one of its
    fields with a known range (hour and weekday aside: a stretch of minutes is always outside most of the day)
    lies outside the range seen in training in more than `MOST` of them. The reason names the fields, and the
    precomputed features the events carry that the model does not read (a sign of a model for other data)."""
    lacking = missing_features_problem(model, events)
    if lacking or len(events) < MIN_EVENTS:
        return lacking
    outside = []
    for name, field in model.fields.items():
        if field.normal is None or field.kind in CLOCK_KINDS:
            continue
        judged = outside_normal(field_values(events, name), field)
        count = int(judged.outside.sum())
        if count > MOST * len(events):
            outside.append(f"{_safe(name)} in {count} of {len(events)} ({_usual(field.normal)}"
                           f"{_most_common(judged)})")
    if not outside:
        return None
    ignored = _ignored_features(model, events)
    carried = (f"; they carry {len(ignored)} features it does not read ({_names(ignored)})" if ignored else "")
    return (f"model {model.name} ({model.version}) does not fit these events: outside what it was trained on are "
            f"{', '.join(outside[:SHOWN])}{', ...' if len(outside) > SHOWN else ''}{carried}: its scores here mean "
            "nothing; use a model trained on this traffic")


def scores_problem(model: OnnxModel, scores: Sequence[float] | np.ndarray) -> str | None:
    """Why `model`'s `scores` (its anomaly scores of a batch of events; NaN: not scored) show that it does not fit
    them (None: they do not): on at least `MIN_SCORED` scores, the share over its threshold exceeds the bound
    described at `FAR_ABOVE`."""
    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < MIN_SCORED:
        return None
    flags = int((values > model.threshold).sum())
    expected = model.card.expected_alert_rate
    bound = min(MAX_UNFIT_ALERT_RATE, max(UNFIT_ALERT_RATE, FAR_ABOVE * expected))
    if flags <= bound * len(values):
        return None
    return (f"model {model.name} ({model.version}) flags {flags} of {len(values)} events (alert rate "
            f"{flags / len(values):.4f}, its card expects {expected:.4f}): it does not fit these events, its flags "
            "here mean nothing; use a model trained on this traffic")


def _ignored_features(model: OnnxModel, events: Sequence[Event]) -> list[str]:
    """The precomputed features most events carry and the model does not read."""
    counts = Counter(name for event in events for name in event.features)
    read = set(model.feature_names)
    return [name for name, n in counts.items() if n * 2 > len(events) and name not in read]


def _usual(normal: Sequence) -> str:
    if isinstance(normal[0], str):
        return "usual " + ", ".join(_safe(value) for value in normal[:SHOWN]) + (", ..." if len(normal) > SHOWN else "")
    return f"usual {normal[0]:g} to {normal[1]:g}"


def _most_common(judged: Judged) -> str:
    """The most common value outside the range, when one text is most of them (`channel` missing)."""
    values = Counter("missing" if (value := judged.shown(row)) is None else value
                     for row in np.flatnonzero(judged.outside).tolist())
    value, count = values.most_common(1)[0]
    if count * 2 <= sum(values.values()) or not isinstance(value, str):
        return ""
    return f": {count} {_safe(value)}"


def _names(names: Sequence[str]) -> str:
    return ", ".join(_safe(name) for name in names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def _safe(text: str) -> str:
    """Event-supplied text (a feature name, a category) as a log line may show it: plain names as they are, any
    other text quoted with escapes and cut short."""
    text = str(text)
    return text if re.fullmatch(r"[\w.:-]{1,64}", text) else ascii(text[:40])
