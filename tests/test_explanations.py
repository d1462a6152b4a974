"""Explanations in an analyst's terms: encodings grouped into fields (errors summed), only those whose value lies
outside the normal range seen in training (stored in the card), hours and weekdays as a person reads them;
`context` on flags."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from fraudmon.core.config import load_settings
from fraudmon.core.events import CHANNELS, event_to_dict
from fraudmon.core.modelcard import FieldCard
from stream_app.decision import CONTEXT_FIELDS
from stream_app.engine import RawMessage
from stream_app.features import EVENT_FEATURES, field_values, fields_of, normal_range, vectorize
from stream_app.replay import offline_engine
from stream_app.scoring import WEEKDAYS, OnnxModel, load_model, outside_normal, shown_normal
from tests.conftest import PROJECT_ROOT
from training.simulate import SimulationConfig, simulate


def test_encodings_of_one_field_are_one_field():
    fields = fields_of(EVENT_FEATURES)
    assert fields["hour"] == ["hour_sin", "hour_cos"] and fields["weekday"] == ["dow_sin", "dow_cos"]
    assert fields["amount"] == ["amount_log", "amount_round"]
    assert fields["channel"] == [f"channel_{c}" for c in (*CHANNELS, "missing")]
    assert len(fields["mcc_group"]) == 9 and fields["account_age_days"][0] == "account_age_days_log"
    assert fields["has_device"] == ["has_device"] and fields_of(["V1", "V2"]) == {"V1": ["V1"], "V2": ["V2"]}


def test_normal_ranges_read_as_an_analyst_expects():
    hours = np.concatenate([np.full(960, 12.5), np.repeat(np.arange(10), 4) + 0.5])  # noon, and 4 each at 0..9 h
    assert normal_range(hours, "hour") == [5.0, 12.0], "the shortest window holding 98% (960 + 4 x 5 of 1000)"
    night = np.array([22.2] * 40 + [23.5] * 30 + [0.1] * 20 + [1.9] * 9 + [13.0])
    assert normal_range(night, "hour") == [22.0, 1.0], "a window may wrap around midnight"
    assert normal_range(["a"] * 195 + ["b"] * 4 + ["c"], "category") == ["a", "b"]
    low, high = normal_range(np.arange(1, 1001, dtype=float), "number")
    assert (low, high) == (10.99, 990.01)
    assert normal_range([np.nan, np.nan], "number") is None


@pytest.fixture(scope="module")
def decided():
    """The shipped model's decisions on a simulated stream with frauds: (model, events, decisions)."""
    engine = offline_engine(load_settings(environ={}))
    events, _ = simulate(SimulationConfig(n_events=3000, n_accounts=150, fraud_rate=0.05, seed=12))
    messages = [RawMessage(json.dumps(event_to_dict(e)).encode(), b"k", "t", 0, i) for i, e in enumerate(events)]
    decisions = []
    for start in range(0, len(messages), 500):
        decisions += engine.process(messages[start:start + 500]).decisions
    return engine.model, events, decisions


def within(field, value) -> bool:
    """Whether a field's raw value lies inside its card's normal range (whole hours and weekdays in a window that
    may wrap)."""
    normal = field.normal
    if field.kind == "category":
        return value in normal
    if value is None or np.isnan(value):
        return False
    if field.kind in ("hour", "weekday"):
        period = 24 if field.kind == "hour" else 7
        return (int(value) - normal[0]) % period <= (normal[1] - normal[0]) % period
    return normal[0] <= value <= normal[1]


def test_top_features_name_the_largest_errors_outside_the_normal_range(decided):
    model, events, decisions = decided
    card_fields = model.card.explanation.fields
    assert set(card_fields) == set(fields_of(model.feature_names))
    assert card_fields["amount"].normal[0] < card_fields["amount"].normal[1]
    assert card_fields["channel"].kind == "category" and "ecommerce" in card_fields["channel"].normal
    _, errors = model.score(vectorize(events, model.feature_names))
    position = {name: j for j, name in enumerate(model.feature_names)}
    skipped = 0
    for event, decision, row in zip(events, decisions, errors, strict=True):
        items = decision["model"]["top_features"]
        summed = {name: sum(row[position[f]] for f in field.features) for name, field in card_fields.items()}
        ranked = sorted(summed, key=lambda name: -summed[name])
        outside = [name for name in ranked if not within(card_fields[name], field_values([event], name)[0])]
        assert [item["field"] for item in items] == outside[:3], "the three largest errors outside their range"
        skipped += [item["field"] for item in items] != ranked[:3]
        for item in items:
            field = card_fields[item["field"]]
            assert item["name"] in field.features
            expected = field_values([event], item["field"])[0]
            if field.kind == "hour":
                assert item["value"] == f"{int(expected):02d}:{int(expected * 60) % 60:02d}"
            elif field.kind == "weekday":
                assert item["value"] == WEEKDAYS[int(expected)]
            elif field.kind == "number" and item["value"] is not None:
                assert item["value"] == pytest.approx(expected, abs=1e-4)
                low, high = field.normal
                assert item["beyond"] == pytest.approx(expected - (high if expected > high else low), abs=1e-3)
                assert (item["beyond"] > 0) == (expected > high)
            else:
                assert item["value"] == expected
            assert item["error"] == pytest.approx(summed[item["field"]], rel=1e-5)
        errors_shown = [item["error"] for item in items]
        assert errors_shown == sorted(errors_shown, reverse=True), "the largest error first"
    assert skipped > len(decisions) / 2, "fields within their range are left out (most events have a few)"
    amount = next(item for d in decisions for item in d["model"]["top_features"] if item["field"] == "amount")
    assert isinstance(amount["value"], float)


def test_cyclical_ranges_read_as_clock_times_and_day_names(decided):
    """The issue's cases: `{"field": "weekday", "value": 6.0, "normal": [0.0, 6.0]}` named although inside, and
    `"normal": [5.0, 0.0]` for hours."""
    model, _, decisions = decided
    hour, weekday = model.fields["hour"], model.fields["weekday"]
    assert shown_normal(hour) == [f"{int(hour.normal[0]):02d}:00", f"{int(hour.normal[1]) + 1:02d}:00"]
    assert shown_normal(FieldCard(features=("hour_sin",), kind="hour", normal=(5.0, 0.0))) == ["05:00", "01:00"]
    assert shown_normal(FieldCard(features=("hour_sin",), kind="hour", normal=(0.0, 23.0))) == ["00:00", "24:00"]
    assert shown_normal(FieldCard(features=("dow_sin",), kind="weekday", normal=(5.0, 0.0))) == ["Saturday", "Monday"]
    items = [item for d in decisions for item in d["model"]["top_features"]]
    assert all(item["normal"] == shown_normal(hour) for item in items if item["field"] == "hour")
    assert all(item["normal"] == shown_normal(weekday) for item in items if item["field"] == "weekday")
    if weekday.normal == (0.0, 6.0):
        assert not any(item["field"] == "weekday" for item in items), "every weekday is usual"
    night = FieldCard(features=("hour_sin",), kind="hour", normal=(22.0, 1.0))
    judged = outside_normal(np.array([23.5, 1.99, 2.0, 3.0, 21.25, 11.0, 13.0]), night)
    assert [judged.shown(i) for i in range(7)] == ["23:30", "01:59", "02:00", "03:00", "21:15", "11:00", "13:00"]
    assert judged.outside.tolist() == [False, False, True, True, True, True, True]
    beyond = [judged.beyond(i) for i in range(7)]
    assert beyond == [None, None, 0.0, 1.0, -0.75, 9.0, -9.0], "hours after the window's end or before its start"
    days = outside_normal(np.array([0.0, 4.0, 5.0, 6.0]), FieldCard(features=("dow_sin",), kind="weekday",
                                                                   normal=(0.0, 4.0)))
    assert [days.shown(i) for i in range(4)] == ["Monday", "Friday", "Saturday", "Sunday"]
    assert [days.beyond(i) for i in range(4)] == [None, None, 1.0, -1.0]


def test_weekday_no_longer_explains_most_flags(decided):
    """dow_cos used to be the top feature of many flags; with the weekday one field among the others, it
    seldom is."""
    _, _, decisions = decided
    flags = [d for d in decisions if "model" in d["reasons"]]
    top = Counter(d["model"]["top_features"][0]["field"] for d in flags if d["model"]["top_features"])
    assert flags and top["weekday"] <= 0.15 * len(flags), top


def test_flags_carry_context_and_passes_do_not(decided):
    _, events, decisions = decided
    by_id = {e.transaction_id: e for e in events}
    flags = [d for d in decisions if d["decision"] == "flag"]
    assert flags and all("context" not in d for d in decisions if d["decision"] == "pass")
    for decision in flags:
        event = by_id[decision["transaction_id"]]
        assert decision["context"] == {k: getattr(event, k) for k in CONTEXT_FIELDS if getattr(event, k) is not None}


def test_a_card_without_explanation_still_groups_fields():
    served = load_model(PROJECT_ROOT / "models" / "default.onnx")
    old_card = served.card.model_copy(update={"explanation": None})
    model = OnnxModel(session=served.session, card=old_card, path=served.path)
    assert model.fields["hour"].features == ("hour_sin", "hour_cos") and model.fields["hour"].normal is None
    events, _ = simulate(SimulationConfig(n_events=50, n_accounts=40, seed=2))
    _, errors = model.score(vectorize(events, model.feature_names))
    (explained,) = model.explain(events[:1], model.top_fields(errors[:1]))
    assert all(item["normal"] is None and item["field"] in model.fields for item in explained)
