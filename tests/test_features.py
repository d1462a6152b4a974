"""Features: one definition for trainer and worker, known values, names-driven, fast."""

import json
import math
import time

import numpy as np
import pytest

from fraudmon.core.events import Event, event_from_dict, event_to_dict, parse_event
from stream_app.features import (
    EVENT_FEATURES,
    FeatureError,
    default_feature_names,
    mcc_group,
    vectorize,
)
from training.data import load_dataset

RAW = {
    "transaction_id": "tx-1", "account_id": "acc-1", "amount": 129.95, "currency": "EUR",
    "timestamp": "2026-11-23T18:00:00Z",  # a Monday, 18:00 UTC
    "merchant_id": "m-1", "merchant_category": "5944", "country": "BR", "ip": "203.0.113.7",
    "device_id": "dev-9", "channel": "ecommerce", "account_created_at": "2026-11-13T18:00:00Z",
}


def features_of(event: Event, names=EVENT_FEATURES) -> dict[str, float]:
    return dict(zip(names, vectorize([event], names)[0].tolist(), strict=True))


def test_known_values_of_the_event_features():
    f = features_of(event_from_dict(RAW))
    assert f["amount_log"] == pytest.approx(math.log1p(129.95), rel=1e-6)
    assert f["hour_sin"] == pytest.approx(-1.0, abs=1e-6) and f["hour_cos"] == pytest.approx(0.0, abs=1e-6)
    assert f["dow_sin"] == pytest.approx(0.0, abs=1e-6) and f["dow_cos"] == pytest.approx(1.0, abs=1e-6)
    assert [f[f"channel_{c}"] for c in ("card_present", "ecommerce", "transfer", "atm", "missing")] == [0, 1, 0, 0, 0]
    assert f["mcc_high_value"] == 1 and sum(v for k, v in f.items() if k.startswith("mcc_")) == 1
    assert f["currency_foreign"] == 1  # EUR spent in Brazil
    assert f["account_age_days_log"] == pytest.approx(math.log1p(10), rel=1e-6)
    assert f["account_age_missing"] == 0
    assert (f["has_counterparty"], f["has_device"], f["has_ip"], f["amount_round"]) == (0, 1, 1, 0)


def test_missing_optional_fields_have_defined_values():
    f = features_of(event_from_dict({"transaction_id": "t", "account_id": "a", "amount": 50,
                                     "timestamp": 1_795_046_400_000}))  # 2026-11-19T00:00Z
    assert f["account_age_days_log"] == 0 and f["account_age_missing"] == 1
    assert f["channel_missing"] == 1 and f["mcc_other"] == 1
    assert f["currency_foreign"] == 0 and f["amount_round"] == 1
    assert f["dow_sin"] == pytest.approx(math.sin(2 * math.pi * 3 / 7), abs=1e-6)  # a Thursday


@pytest.mark.parametrize(("code", "group"), [("5411", "grocery"), ("5812", "dining"), ("4111", "travel"),
                                             ("3058", "travel"), ("5541", "fuel"), ("5732", "high_value"),
                                             ("5816", "digital"), ("6011", "cash"), ("5999", "retail"),
                                             ("0742", "other"), ("abc", "other"), (None, "other")])
def test_merchant_category_groups(code, group):
    assert mcc_group(code) == group


def test_training_and_serving_compute_identical_features(tmp_path):
    """The trainer reads events from files; the worker parses Kafka bytes. Same event, same vector."""
    events = [
        event_from_dict(RAW),
        event_from_dict({**RAW, "transaction_id": "tx-2", "channel": "transfer", "counterparty_id": "acc-9",
                         "merchant_category": None, "amount": 2500, "timestamp": 1_700_000_123_456}),
        event_from_dict({"transaction_id": "tx-3", "account_id": "acc-3", "amount": 0.5,
                         "timestamp": "2026-11-24T03:14:15.926+02:00"}),
    ]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("".join(json.dumps(event_to_dict(e)) + "\n" for e in events))
    from fraudmon.core.eventfiles import write_events

    csv_path = tmp_path / "events.csv"
    write_events(csv_path, events)
    serving = vectorize([parse_event(json.dumps(event_to_dict(e)).encode()) for e in events], EVENT_FEATURES)
    for path in (jsonl, csv_path):
        training = vectorize(load_dataset(path).events, EVENT_FEATURES)
        np.testing.assert_array_equal(training, serving)


def test_card_holder_rows_become_v_features_plus_amount(tmp_path):
    header = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class"]
    row = ["10", *(str(i / 10) for i in range(1, 29)), "99.5", "0"]
    path = tmp_path / "cc.csv"
    path.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    events = load_dataset(path).events
    names = default_feature_names(events)
    assert names == [*(f"V{i}" for i in range(1, 29)), "amount_log"]
    x = vectorize(events, names)
    assert x.dtype == np.float32 and x.shape == (1, 29)
    np.testing.assert_allclose(x[0, :28], np.arange(1, 29) / 10, rtol=1e-6)
    assert x[0, 28] == pytest.approx(math.log1p(99.5), rel=1e-6)
    served = parse_event(json.dumps(event_to_dict(events[0])).encode())
    np.testing.assert_array_equal(vectorize([served], names), x)


def test_default_feature_names_for_project_events():
    assert default_feature_names([event_from_dict(RAW)]) == list(EVENT_FEATURES)
    assert default_feature_names([]) == list(EVENT_FEATURES)


def test_unknown_feature_name_is_refused_clearly():
    with pytest.raises(FeatureError, match="unknown feature 'amount_sqrt'.*built-in"):
        vectorize([event_from_dict(RAW)], ["amount_log", "amount_sqrt"])


def test_event_lacking_a_precomputed_feature_is_named():
    with_v = event_from_dict({**RAW, "features": {"V1": 1.0}})
    without = event_from_dict({**RAW, "transaction_id": "tx-lacking"})
    with pytest.raises(FeatureError, match="tx-lacking has no features.V1"):
        vectorize([with_v, without], ["V1"])


def test_vectorize_is_fast_enough_for_the_worker():
    batch = [event_from_dict({**RAW, "transaction_id": f"tx-{i}", "amount": i}) for i in range(500)]
    vectorize(batch, EVENT_FEATURES)
    started = time.perf_counter()
    for _ in range(20):
        vectorize(batch, EVENT_FEATURES)
    per_batch = (time.perf_counter() - started) / 20
    assert per_batch < 0.02, f"{per_batch * 1000:.1f} ms per 500 events (need well under 100 ms for 5,000/s)"
    assert vectorize([], EVENT_FEATURES).shape == (0, len(EVENT_FEATURES))


def test_one_hot_blocks_equal_the_features_one_by_one_in_any_order():
    """`vectorize` encodes runs of one-hot features as one block; each column must be the feature on its own,
    whatever the order, gaps or repeats of the names (a card may list features in any order)."""
    events = [event_from_dict({**RAW, "transaction_id": f"tx-{i}", "channel": channel, "merchant_category": mcc})
              for i, (channel, mcc) in enumerate([("atm", "6011"), (None, "abc"), ("transfer", None),
                                                  ("card_present", "5411"), ("ecommerce", "0742")])]
    shuffled = list(EVENT_FEATURES)
    np.random.default_rng(2).shuffle(shuffled)
    orders = [list(EVENT_FEATURES), shuffled, ["mcc_cash", "amount_log", "mcc_cash", "channel_atm", "mcc_other",
                                               "channel_missing", "channel_atm"]]
    for names in orders:
        got = vectorize(events, names)
        for j, name in enumerate(names):
            family, _, target = name.partition("_")
            if family == "channel":
                expected = [float((e.channel or "missing") == target) for e in events]
            elif family == "mcc":
                expected = [float(mcc_group(e.merchant_category) == target) for e in events]
            else:
                expected = vectorize(events, [name])[:, 0].tolist()
            assert got[:, j].tolist() == expected, (names, name)
