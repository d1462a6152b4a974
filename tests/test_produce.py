"""`fraudmon produce`: file formats and their validation (unit), and delivery to a real broker (integration)."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from fraudmon.config import Settings
from fraudmon.errors import InputDataError
from fraudmon.produce import (
    DEFAULT_BASE_TIME,
    malformed_messages,
    open_event_file,
    produce_command,
    produce_events,
    read_events_file,
)
from stream_app.schema import InvalidEvent, parse_event
from training.simulate import SimulationConfig, read_ground_truth, simulate, write_events, write_ground_truth

CREDITCARD = Path("/work/shared/data/creditcard_head.csv")
needs_creditcard = pytest.mark.skipif(not CREDITCARD.exists(), reason=f"{CREDITCARD} is not here")


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(produce_command)
    return app


def _small_events(n: int = 200, seed: int = 1):
    return simulate(SimulationConfig(n_events=n, n_accounts=100, start=datetime(2026, 11, 1, tzinfo=UTC),
                                     duration=timedelta(hours=1), seed=seed))


def _bad_creditcard(tmp_path: Path, row: int, column: str, value: str) -> Path:
    """A copy of the first rows of the card-holder file with one cell replaced (row is 1-based)."""
    lines = CREDITCARD.read_text().splitlines()[:20]
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_creditcard
def test_creditcard_rows_become_events_with_features_and_labels(tmp_path: Path) -> None:
    source = open_event_file(CREDITCARD)
    events = list(source.events())
    assert source.kind == "creditcard" and source.rows == len(events) == 9_528
    assert all(len(e.features) == 28 and list(e.features)[0] == "V1" for e in events)
    assert events[0].transaction_id == "cc-0" and events[-1].transaction_id == "cc-9527"
    assert events[0].amount == 149.62
    base_ms = int(DEFAULT_BASE_TIME.timestamp() * 1000)
    assert events[0].timestamp_ms == base_ms and events[-1].timestamp_ms == base_ms + 14_224_000
    truth = source.ground_truth()
    write_ground_truth(tmp_path / "truth.csv", truth)
    labels = read_ground_truth(tmp_path / "truth.csv")
    assert len(labels) == 9_528 and sum(t.label for t in labels) == 38
    assert {t.scenario for t in labels if t.label} == {"creditcard"}
    # Synthetic accounts are a stable hash of the row: the same on every read.
    assert [e.account_id for e in open_event_file(CREDITCARD).events()] == [e.account_id for e in events]
    assert 900 < len({e.account_id for e in events}) <= 1_000
    in_memory, labels_in_memory = read_events_file(CREDITCARD)
    assert in_memory == events and labels_in_memory == truth


@needs_creditcard
def test_creditcard_missing_column_names_the_column(tmp_path: Path) -> None:
    lines = CREDITCARD.read_text().splitlines()[:5]
    path = tmp_path / "no_v7.csv"
    path.write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != 7) for line in lines))
    with pytest.raises(InputDataError, match=r"column V7 is missing from the header \(line 1\)"):
        open_event_file(path)


@needs_creditcard
@pytest.mark.parametrize(("column", "value", "problem"), [
    ("V3", "abc", "is not a number"), ("Amount", "", "is not a number"), ("Time", "nan", "not a finite number"),
    ("Amount", "-3", "negative"), ("Class", "2", "not 0 or 1"),
])
def test_creditcard_bad_value_names_column_and_row(tmp_path: Path, column: str, value: str, problem: str) -> None:
    with pytest.raises(InputDataError, match=rf"data row 5 \(file line 6\), column {column}: .*{problem}"):
        open_event_file(_bad_creditcard(tmp_path, 5, column, value))


def test_project_event_files_round_trip(tmp_path: Path) -> None:
    events, _ = _small_events()
    write_events(tmp_path / "events.jsonl", events)
    write_events(tmp_path / "events.csv", events)
    jsonl = open_event_file(tmp_path / "events.jsonl")
    table = open_event_file(tmp_path / "events.csv")
    assert (jsonl.kind, table.kind) == ("events-jsonl", "events-csv")
    assert list(jsonl.events()) == events == list(table.events())
    assert jsonl.ground_truth() is None
    assert read_events_file(tmp_path / "events.csv") == (events, [])


def test_project_csv_errors_name_column_and_row(tmp_path: Path) -> None:
    events, _ = _small_events(20)
    path = tmp_path / "events.csv"
    write_events(path, events)
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(f",{events[2].amount},", ",12.5x,", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputDataError, match=r"data row 3 \(file line 4\), column amount"):
        open_event_file(path)
    header = lines[0].replace("timestamp,", "when,", 1)
    path.write_text(header + "\n")
    with pytest.raises(InputDataError, match="required column timestamp is missing"):
        open_event_file(path)


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    events, _ = _small_events(10)
    path = tmp_path / "events.jsonl"
    write_events(path, events)
    lines = path.read_text().splitlines()
    lines[6] = lines[6].replace('"amount":', '"amount":"lots","was":', 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputDataError, match=r"file line 7, field amount: must be a number"):
        open_event_file(path)


def test_unknown_header_says_which_formats_work(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputDataError, match="Time,V1..V28,Amount,Class"):
        open_event_file(path)


@needs_creditcard
def test_bad_file_stops_before_kafka_is_contacted(tmp_path: Path) -> None:
    path = _bad_creditcard(tmp_path, 9, "V12", "oops")
    started = time.monotonic()
    result = CliRunner().invoke(_cli(), ["--file", str(path), "--bootstrap", "127.0.0.1:1", "--no-progress"])
    assert result.exit_code == 2
    assert "data row 9 (file line 10), column V12" in result.output
    assert time.monotonic() - started < 5  # it never waited for the (absent) broker


def test_malformed_messages_are_all_dead_letters() -> None:
    messages = malformed_messages(12)
    assert len({key for key, _ in messages}) == 12
    for _, value in messages:
        with pytest.raises(InvalidEvent):
            parse_event(value)


# ---------------------------------------------------------------------------------------------- integration


def _read_topic(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """Every record now in the topic, read up to the end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(partitions)
        records: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records += [(r.key, r.value) for r in batch]
        return records
    finally:
        consumer.close()


@pytest.mark.integration
def test_paced_stream_arrives_exactly_once_at_the_rate(
    settings: Settings, kafka_bootstrap: str, make_topic: Callable[..., str],
) -> None:
    topic = make_topic(partitions=6)
    events, _ = simulate(SimulationConfig(n_events=25_000, n_accounts=10_000, start=datetime.now(UTC),
                                          duration=timedelta(seconds=12), seed=11))
    summary = produce_events(settings, events, topic=topic, rate=2_000, duration=10, live_time=True)
    assert summary.sent == summary.delivered == 20_000 and summary.failed == 0
    assert abs(summary.rate - 2_000) <= 200, summary
    assert 9.0 <= summary.elapsed_s <= 11.0
    records = _read_topic(kafka_bootstrap, topic)
    ids = Counter(json.loads(value)["transaction_id"] for _, value in records)
    assert len(records) == 20_000 and len(ids) == 20_000 and max(ids.values()) == 1
    assert set(ids) == {e.transaction_id for e in events[:20_000]}
    first = {e.transaction_id: e for e in events[:20_000]}
    for key, value in records[:100]:
        event = parse_event(value)
        assert key == event.account_id.encode() and abs(event.timestamp_ms - time.time() * 1000) < 120_000
        # live time moves the account's creation with the event, so the account's age is kept
        original = first[event.transaction_id]
        assert event.timestamp_ms - event.account_created_ms == original.timestamp_ms - original.account_created_ms


@pytest.mark.integration
@needs_creditcard
def test_creditcard_replay_arrives_with_truth_file(
    settings: Settings, kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path,
) -> None:
    topic = make_topic(partitions=6)
    truth = tmp_path / "truth.csv"
    data = tmp_path / "creditcard.csv"
    shutil.copy(CREDITCARD, data)
    result = CliRunner().invoke(_cli(), [
        "--file", str(data), "--topic", topic, "--bootstrap", kafka_bootstrap, "--rate", "5000",
        "--truth", str(truth), "--malformed", "6", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "delivered  9534" in result.output
    records = _read_topic(kafka_bootstrap, topic)
    valid, invalid = [], 0
    for _, value in records:
        try:
            valid.append(parse_event(value))
        except InvalidEvent:
            invalid += 1
    assert len(valid) == 9_528 and invalid == 6
    assert len({e.transaction_id for e in valid}) == 9_528
    assert all(len(e.features) == 28 for e in valid)
    labels = read_ground_truth(truth)
    assert len(labels) == 9_528 and sum(t.label for t in labels) == 38
