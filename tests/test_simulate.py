"""The synthetic traffic simulator: determinism, scenarios, fraud rate, habits, and the files it writes."""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from fraudmon.core.eventfiles import GroundTruth, read_ground_truth, write_events, write_ground_truth
from fraudmon.core.events import FILE_LIMITS, event_from_dict, event_to_dict
from training.simulate import SCENARIOS, SimulationConfig, simulate

START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def month() -> tuple[list, list[GroundTruth]]:
    """100,000 events over 30 days: the training-data shape."""
    return simulate(SimulationConfig(n_events=100_000, n_accounts=2_000, start=START,
                                     duration=timedelta(days=30), fraud_rate=0.005, seed=7))


def test_same_seed_same_output_and_different_seed_differs() -> None:
    config = SimulationConfig(n_events=5_000, n_accounts=300, start=START, duration=timedelta(days=3), seed=1)
    assert simulate(config) == simulate(config)
    other = simulate(SimulationConfig(n_events=5_000, n_accounts=300, start=START, duration=timedelta(days=3),
                                      seed=2))
    assert [event_to_dict(e) | {"transaction_id": ""} for e in other[0]] != \
        [event_to_dict(e) | {"transaction_id": ""} for e in simulate(config)[0]]


def test_events_sorted_within_span_and_ids_unique(month) -> None:
    events, truth = month
    stamps = [e.timestamp_ms for e in events]
    assert stamps == sorted(stamps)
    start_ms = int(START.timestamp() * 1000)
    assert start_ms <= stamps[0] and stamps[-1] <= start_ms + 30 * 86_400_000
    assert len({e.transaction_id for e in events}) == len(events) == 100_000
    assert [t.transaction_id for t in truth] == [e.transaction_id for e in events]


def test_every_scenario_appears_and_is_labelled(month) -> None:
    _, truth = month
    per_scenario = Counter(t.scenario for t in truth)
    assert set(SCENARIOS) <= set(per_scenario)
    assert all(t.label == (t.scenario != "normal") for t in truth)


@pytest.mark.parametrize(("rate", "n_events", "tolerance"), [(0.005, 100_000, 0.0015), (0.02, 30_000, 0.003)])
def test_fraud_rate_within_tolerance(rate: float, n_events: int, tolerance: float, month) -> None:
    if n_events == 100_000:
        _, truth = month
    else:
        _, truth = simulate(SimulationConfig(n_events=n_events, n_accounts=1_000, start=START,
                                             duration=timedelta(days=10), fraud_rate=rate, seed=3))
    observed = sum(t.label for t in truth) / len(truth)
    assert abs(observed - rate) <= tolerance


def test_scenarios_have_their_shape(month) -> None:
    events, truth = month
    by_account: dict[str, list] = defaultdict(list)
    for event, label in zip(events, truth, strict=True):
        by_account[event.account_id].append((event, label))
    normal_median = {
        account: statistics.median(e.amount for e, t in rows if t.label == 0)
        for account, rows in by_account.items() if sum(t.label == 0 for _, t in rows) >= 5
    }
    groups: dict[str, list] = defaultdict(list)
    for event, label in zip(events, truth, strict=True):
        groups[label.scenario].append(event)
    for event in groups["card_testing"]:
        assert 0.5 <= event.amount <= 5 and event.channel == "ecommerce"
    for event in groups["bust_out"]:
        assert event.timestamp_ms - event.account_created_ms < 7 * 3_600_000 and event.amount >= 800
    for event in groups["new_counterparty_transfer"]:
        assert event.channel == "transfer" and event.amount >= 1500
        paid_before = {e.counterparty_id for e, t in by_account[event.account_id] if t.label == 0}
        assert event.counterparty_id not in paid_before
    for event in groups["amount_anomaly"]:
        if event.account_id in normal_median:
            assert event.amount >= 8 * normal_median[event.account_id]
    for event in groups["account_takeover"]:
        homes = Counter(e.country for e, t in by_account[event.account_id] if t.label == 0)
        assert event.country not in homes
    fanout_ips = Counter(e.ip for e in groups["ip_fanout"])
    for ip in fanout_ips:
        window = [e for e in groups["ip_fanout"] if e.ip == ip]
        assert len({e.account_id for e in window}) >= 15
        assert window[-1].timestamp_ms - window[0].timestamp_ms <= 90_000


def test_normal_accounts_keep_their_habits(month) -> None:
    events, truth = month
    by_account: dict[str, list] = defaultdict(list)
    for event, label in zip(events, truth, strict=True):
        if label.label == 0:
            by_account[event.account_id].append(event)
    within = total = 0
    for rows in by_account.values():
        if len(rows) < 10:
            continue
        home, home_count = Counter(e.country for e in rows).most_common(1)[0]
        assert home_count / len(rows) >= 0.9
        median = statistics.median(e.amount for e in rows)
        within += sum(median / 10 <= e.amount <= median * 10 for e in rows)
        total += len(rows)
    assert total > 50_000
    assert within / total >= 0.98


def test_daily_rhythm_more_activity_by_day(month) -> None:
    events, _ = month
    hours = Counter(datetime.fromtimestamp(e.timestamp_ms / 1000, tz=UTC).hour for e in events)
    assert hours[12] + hours[18] > 4 * (hours[3] + hours[4])


def test_short_live_span_has_no_normal_bursts() -> None:
    events, truth = simulate(SimulationConfig(n_events=6_000, n_accounts=3_000, start=START,
                                              duration=timedelta(seconds=60), seed=5))
    start_ms = int(START.timestamp() * 1000)
    assert all(start_ms <= e.timestamp_ms <= start_ms + 60_000 for e in events)
    per_account = Counter(e.account_id for e, t in zip(events, truth, strict=True) if t.label == 0)
    assert max(per_account.values()) <= 3
    assert sum(t.label for t in truth) == 30


def test_every_event_round_trips_through_the_schema(month) -> None:
    events, _ = month
    for event in events:
        assert event_from_dict(json.loads(json.dumps(event_to_dict(event))), FILE_LIMITS) == event


def test_files_keep_labels_apart(tmp_path, month) -> None:
    events, truth = month
    events, truth = events[:3_000], truth[:3_000]
    assert write_events(tmp_path / "events.jsonl", events) == 3_000
    assert write_events(tmp_path / "events.csv", events) == 3_000
    write_ground_truth(tmp_path / "truth.csv", truth)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    decoded = [event_from_dict(json.loads(line)) for line in lines]
    assert decoded == events
    assert not any("label" in json.loads(line) or "scenario" in json.loads(line) for line in lines)
    with (tmp_path / "events.csv").open(newline="") as source:
        reader = csv.DictReader(source)
        assert "label" not in (reader.fieldnames or []) and "features" not in (reader.fieldnames or [])
        assert [row["transaction_id"] for row in reader] == [e.transaction_id for e in events]
    assert read_ground_truth(tmp_path / "truth.csv") == truth
    assert (tmp_path / "truth.csv").read_text().splitlines()[0] == "transaction_id,label,scenario"


def test_invalid_config_says_what_to_change() -> None:
    with pytest.raises(ValueError, match="n_accounts"):
        simulate(SimulationConfig(n_events=100, n_accounts=5))
    with pytest.raises(ValueError, match="fraud_rate"):
        simulate(SimulationConfig(n_events=100, fraud_rate=0.9))
