"""Explanations in an analyst's terms: encodings grouped into fields (errors summed), each with the event's raw
value and the normal range seen in training (stored in the card); `context` on flags."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from fraudmon.core.config import load_settings
from fraudmon.core.events import CHANNELS, event_to_dict
from stream_app.decision import CONTEXT_FIELDS
from stream_app.engine import RawMessage
from stream_app.features import EVENT_FEATURES, field_values, fields_of, normal_range, vectorize
from stream_app.replay import offline_engine
from stream_app.scoring import OnnxModel, load_model
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


def test_top_features_give_field_raw_value_normal_range_and_summed_error(decided):
    model, events, decisions = decided
    card_fields = model.card.explanation.fields
    assert set(card_fields) == set(fields_of(model.feature_names))
    assert card_fields["amount"].normal[0] < card_fields["amount"].normal[1]
    assert card_fields["channel"].kind == "category" and "ecommerce" in card_fields["channel"].normal
    _, errors = model.score(vectorize(events, model.feature_names))
    position = {name: j for j, name in enumerate(model.feature_names)}
    for event, decision, row in zip(events, decisions, errors, strict=True):
        items = decision["model"]["top_features"]
        assert len(items) == 3 and len({item["field"] for item in items}) == 3, "one item per field"
        for item in items:
            field = card_fields[item["field"]]
            assert item["name"] in field.features and item["normal"] == list(field.normal)
            expected = field_values([event], item["field"])[0]
            assert item["value"] == (expected if isinstance(expected, str) else pytest.approx(expected, abs=1e-4))
            assert item["error"] == pytest.approx(sum(row[position[f]] for f in field.features), rel=1e-5)
        errors = [item["error"] for item in items]
        assert errors == sorted(errors, reverse=True), "the largest error first"
    amount = next(item for d in decisions for item in d["model"]["top_features"] if item["field"] == "amount")
    assert isinstance(amount["value"], float)


def test_weekday_no_longer_explains_most_flags(decided):
    """dow_cos used to be the top feature of many flags; with the weekday one field among the others, it
    seldom is."""
    _, _, decisions = decided
    flags = [d for d in decisions if "model" in d["reasons"]]
    top = Counter(d["model"]["top_features"][0]["field"] for d in flags)
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
