"""`fraudmon produce`: file formats and their validation (unit), and delivery to a real broker (integration)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import IllegalStateError, KafkaTimeoutError
from kafka.future import Future
from typer.testing import CliRunner

from fraudmon.cli.produce import produce_command
from fraudmon.core.config import Settings, load_settings
from fraudmon.core.errors import InputDataError
from fraudmon.core.eventfiles import (
    DEFAULT_BASE_TIME,
    open_event_file,
    read_events_file,
    read_ground_truth,
    write_events,
    write_ground_truth,
)
from fraudmon.core.events import InvalidEvent, parse_event
from fraudmon.tools.produce import Deliveries, StallWatch, malformed_messages, produce_events
from fraudmon.tools.stack import LocalStack, create_topics
from tests.conftest import CREDITCARD, PROJECT_ROOT, free_port, needs_creditcard
from training.simulate import SimulationConfig, simulate


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(produce_command)
    return app


def _small_events(n: int = 200, seed: int = 1):
    return simulate(SimulationConfig(n_events=n, n_accounts=100, start=datetime(2026, 11, 1, tzinfo=UTC),
                                     duration=timedelta(hours=1), seed=seed))


def _bad_creditcard(tmp_path: Path, row: int, column: str, value: str) -> Path:
    """A copy of the first rows of the card-holder file with one cell replaced (row is 1-based)."""
    lines = gzip.decompress(CREDITCARD.read_bytes()).decode().splitlines()[:20]
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
    lines = gzip.decompress(CREDITCARD.read_bytes()).decode().splitlines()[:5]
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


# ------------------------------------------------------------------------------------- delivery (no broker)


class FakeProducer:
    """Stands in for KafkaProducer: each message is acknowledged, held (the broker is gone) or refused by send(),
    by its position; `force_close` fails what is held, as kafka-python does."""

    def __init__(self, fate: Callable[[int], str]) -> None:
        self.fate = fate
        self.values: list[bytes] = []
        self.acked: list[str] = []
        self.held: list[Future] = []
        self._sender = self
        self.closed = False

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def send(self, topic: str, value: bytes, key: bytes) -> Future:
        fate = self.fate(len(self.values))
        if fate == "interrupt":
            raise KeyboardInterrupt
        if fate == "refuse":
            raise KafkaTimeoutError("Failed to update metadata after 15.0 secs.")
        self.values.append(value)
        future = Future()
        if fate == "ack":
            self.acked.append(json.loads(value).get("transaction_id", ""))
            return future.success(None)
        self.held.append(future)
        return future

    def force_close(self) -> None:
        for future in self.held:
            future.failure(IllegalStateError("Producer is closed forcefully."))

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[int], str]], FakeProducer]:
    """`fake_producer(fate)`: the next produce run sends to a FakeProducer with that fate per message."""

    def install(fate: Callable[[int], str]) -> FakeProducer:
        producer = FakeProducer(fate)
        monkeypatch.setattr("fraudmon.tools.produce.make_producer", lambda *args, **kwargs: producer)
        return producer

    return install


def _truth_ids(path: Path) -> list[str]:
    return [t.transaction_id for t in read_ground_truth(path)]


def test_stall_watch_warns_at_most_every_interval_while_nothing_is_acknowledged() -> None:
    deliveries = Deliveries()
    warnings: list[str] = []
    watch = StallWatch(deliveries, "127.0.0.1:9092", 120, warnings.append, stall_after=5, every=10, now=0.0)
    assert watch.check(30.0) is None, "nothing outstanding: an idle producer is not stalled"
    deliveries.handed = 100
    deliveries.ok("tx-1", None)
    assert watch.check(31.0) is None
    assert watch.check(35.5) is None  # 4.5 s without an acknowledgement
    message = watch.check(36.5)
    assert message is not None and message.count("\n") == 0
    assert "127.0.0.1:9092" in message and "nothing acknowledged for 6 s" in message and "99 messages" in message
    assert "120 s (--delivery-timeout)" in message
    assert watch.check(40.0) is None and watch.check(46.0) is None, "rate-limited to one per 10 s"
    assert "nothing acknowledged for 16 s" in (watch.check(46.6) or "")
    deliveries.ok("tx-2", None)  # progress: the clock starts again
    assert watch.check(50.0) is None and watch.check(54.0) is None


def test_stall_watch_warns_when_a_send_blocks() -> None:
    deliveries = Deliveries()
    watch = StallWatch(deliveries, "kafka:9092", 30, print, stall_after=5, every=10, now=0.0)
    deliveries.sending_since = 100.0
    assert watch.check(104.0) is None
    assert "send() blocked for 6 s" in (watch.check(106.0) or "")


def test_outage_mid_run_prints_the_summary_truth_of_delivered_events_only_and_exits_1(
    fake_producer: Callable[[Callable[[int], str]], FakeProducer], tmp_path: Path,
) -> None:
    producer = fake_producer(lambda i: "ack" if i < 60 else "hold")  # the broker goes away after 60 messages
    truth = tmp_path / "truth.csv"
    started = time.monotonic()
    result = CliRunner().invoke(_cli(), ["--simulate", "--count", "100", "--rate", "0", "--delivery-timeout", "1",
                                         "--truth", str(truth), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception)
    lines = result.stdout.splitlines()
    assert "sent         100 events" in lines and "delivered    60" in lines
    assert "undelivered  40 (first error: not acknowledged within 1 s)" in lines, lines
    assert any(line.startswith("elapsed") and "s waiting for acknowledgements (at most 1 s" in line for line in lines)
    assert sorted(_truth_ids(truth)) == sorted(producer.acked) and len(producer.acked) == 60
    assert "truth        60 labels of delivered events" in result.stdout
    assert "did not acknowledge 40 messages" in result.stderr
    assert "made-up account ids" not in result.output, "simulated accounts are consistent, no note"
    assert producer.closed and time.monotonic() - started < 10


def test_send_refused_mid_run_is_counted_and_reported_not_raised(
    fake_producer: Callable[[Callable[[int], str]], FakeProducer], tmp_path: Path,
) -> None:
    fake_producer(lambda i: "ack" if i < 30 else "refuse")
    truth = tmp_path / "truth.csv"
    result = CliRunner().invoke(_cli(), ["--simulate", "--count", "100", "--rate", "0", "--truth", str(truth),
                                         "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "sent         31 events" in result.stdout and "delivered    30" in result.stdout
    assert "undelivered  1 (first error: KafkaTimeoutError: Failed to update metadata" in result.stdout
    assert len(_truth_ids(truth)) == 30


def test_ctrl_c_stops_sending_and_still_prints_the_summary(
    fake_producer: Callable[[Callable[[int], str]], FakeProducer], tmp_path: Path,
) -> None:
    fake_producer(lambda i: "interrupt" if i == 50 else "ack" if i < 40 else "hold")
    truth = tmp_path / "truth.csv"
    result = CliRunner().invoke(_cli(), ["--simulate", "--count", "100", "--rate", "0", "--delivery-timeout", "1",
                                         "--truth", str(truth), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "stopping: waiting up to 1 s for 10 outstanding acknowledgements" in result.stderr
    assert "stopped early on request" in result.stdout and "delivered    40" in result.stdout
    # 10 held, and the one whose send() the Ctrl-C interrupted
    assert "undelivered  11 (first error: stopped before Kafka acknowledged them)" in result.stdout
    assert len(_truth_ids(truth)) == 40


@pytest.mark.slow
def test_no_broker_at_start_is_one_line_naming_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(_cli(), ["--simulate", "--count", "10", "--bootstrap", address, "--no-progress"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"no Kafka broker answers at {address}" in result.stderr and "fraudmon stack up" in result.stderr


def _creditcard_csv(path: Path, rows: int = 20) -> Path:
    """A small card-holder file: Time (seconds), V1..V28, Amount, Class."""
    with path.open("w") as out:
        out.write(",".join(["Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class"]) + "\n")
        for row in range(rows):
            out.write(",".join([str(row * 10), *(f"{(row * i) % 7 - 3:.2f}" for i in range(1, 29)), "12.5",
                                str(int(row == 3))]) + "\n")
    return path


def test_live_time_is_the_default_and_file_time_keeps_the_files_time(
    fake_producer: Callable[[Callable[[int], str]], FakeProducer], tmp_path: Path,
) -> None:
    data = _creditcard_csv(tmp_path / "cards.csv")
    live = fake_producer(lambda i: "ack")
    result = CliRunner().invoke(_cli(), ["-f", str(data), "--rate", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "made-up account ids (cc-acc-0..999" in result.stdout and "stateful rules" in result.stdout
    now_ms = time.time() * 1000
    assert all(abs(parse_event(value).timestamp_ms - now_ms) < 60_000 for value in live.values)

    kept = fake_producer(lambda i: "ack")
    result = CliRunner().invoke(_cli(), ["-f", str(data), "--rate", "0", "--file-time", "--no-progress"])
    assert result.exit_code == 0, result.output
    base_ms = int(DEFAULT_BASE_TIME.timestamp() * 1000)
    assert [parse_event(value).timestamp_ms for value in kept.values] == [base_ms + i * 10_000 for i in range(20)]


def test_live_time_moves_account_creation_with_the_event(
    fake_producer: Callable[[Callable[[int], str]], FakeProducer],
) -> None:
    events, _ = _small_events(50)
    producer = fake_producer(lambda i: "ack")
    summary = produce_events(load_settings(environ={}), events, rate=None)
    assert summary.delivered == summary.sent == 50 and summary.undelivered == 0
    assert summary.delivered_ids == {e.transaction_id for e in events}
    for original, value in zip(events, producer.values, strict=True):
        sent = parse_event(value)
        assert abs(sent.timestamp_ms - time.time() * 1000) < 60_000
        if original.account_created_ms is not None:
            assert sent.timestamp_ms - sent.account_created_ms == original.timestamp_ms - original.account_created_ms


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
    data = tmp_path / "creditcard.csv.gz"
    shutil.copy(CREDITCARD, data)
    result = CliRunner().invoke(_cli(), [
        "--file", str(data), "--topic", topic, "--bootstrap", kafka_bootstrap, "--rate", "5000",
        "--truth", str(truth), "--malformed", "6", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "delivered    9534" in result.output and "undelivered  0" in result.output
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


# ------------------------------------------------------------------------------ broker outage (integration)

FRAUDMON = Path(sys.executable).parent / "fraudmon"


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A Kafka-only local stack of its own (free ports, temp dir), for tests that stop and restart the broker."""
    base = load_settings(environ={})
    stack_settings = base.stack.model_copy(update={
        "data_dir": str(tmp_path_factory.mktemp("outage-stack")), "kafka_port": free_port(),
        "kafka_controller_port": free_port(), "redis_port": free_port(), "prometheus_port": free_port(),
    })
    settings = base.model_copy(update={
        "stack": stack_settings,
        "kafka": base.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{stack_settings.kafka_port}"}),
    })
    stack = LocalStack(settings)
    try:
        stack.up(services=("kafka",))
        yield stack
    finally:
        stack.down()


def _topic_size(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(partitions).values()) if partitions else 0
    finally:
        consumer.close()


def _produce_through_outage(stack: LocalStack, tmp_path: Path, args: list[str],
                            restart_after_s: float | None) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run `fraudmon produce` as a user would, stop the broker once messages arrive, and start it again after
    `restart_after_s` (None: only after produce has finished). Returns the topic and the finished process."""
    bootstrap = stack.settings.kafka.bootstrap_servers
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], 6)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = {**os.environ, "FRAUDMON_KAFKA_BOOTSTRAP": bootstrap}
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen([str(FRAUDMON), "produce", "--topic", topic, "--no-progress", *args],
                                   stdout=stdout, stderr=stderr, env=env, cwd=PROJECT_ROOT)
        try:
            deadline = time.monotonic() + 30
            while _topic_size(bootstrap, topic) < 200:
                assert time.monotonic() < deadline and process.poll() is None, err.read_text()
                time.sleep(0.2)
            stack.down()
            if restart_after_s is not None:
                time.sleep(restart_after_s)
                stack.up(services=("kafka",))
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
            stack.up(services=("kafka",))
    return topic, subprocess.CompletedProcess(process.args, process.returncode, out.read_text(), err.read_text())


@pytest.mark.integration
@pytest.mark.slow
def test_produce_rides_out_a_broker_restart_within_the_delivery_timeout(
    outage_stack: LocalStack, tmp_path: Path,
) -> None:
    truth = tmp_path / "truth.csv"
    topic, run = _produce_through_outage(
        outage_stack, tmp_path, ["--simulate", "--rate", "200", "--duration", "15", "--delivery-timeout", "40",
                                 "--truth", str(truth)], restart_after_s=6)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning: Kafka at" in run.stderr and "nothing acknowledged for" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "sent         3000 events" in run.stdout and "delivered    3000" in run.stdout
    assert "undelivered  0" in run.stdout
    records = _read_topic(outage_stack.settings.kafka.bootstrap_servers, topic)
    assert sorted(json.loads(value)["transaction_id"] for _, value in records) == sorted(_truth_ids(truth))


@pytest.mark.integration
@pytest.mark.slow
def test_produce_through_a_longer_outage_reports_and_keeps_truth_of_delivered_events_only(
    outage_stack: LocalStack, tmp_path: Path,
) -> None:
    truth = tmp_path / "truth.csv"
    topic, run = _produce_through_outage(
        outage_stack, tmp_path, ["--simulate", "--rate", "200", "--duration", "8", "--delivery-timeout", "3",
                                 "--truth", str(truth)], restart_after_s=None)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "Traceback" not in output
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: Kafka at")]
    assert warnings and "nothing acknowledged for" in warnings[0], run.stderr
    summary = dict(line.split(None, 1) for line in run.stdout.splitlines() if line.split(None, 1)[0] in
                   ("sent", "delivered", "undelivered", "elapsed"))
    delivered = int(summary["delivered"])
    assert summary["sent"] == "1600 events" and 200 <= delivered < 1600, summary
    assert summary["undelivered"].startswith(f"{1600 - delivered} (first error: ")
    assert "waiting for acknowledgements (at most 3 s" in summary["elapsed"]
    assert "did not acknowledge" in run.stderr
    # After the restart: every event in the truth file is in the topic, and the truth file holds exactly the
    # acknowledged ones. A message the broker wrote but could not acknowledge before it went down is not known to
    # the producer as delivered; at most the requests in flight at the shutdown can be such.
    in_topic = {json.loads(value)["transaction_id"] for _, value in
                _read_topic(outage_stack.settings.kafka.bootstrap_servers, topic)}
    labelled = set(_truth_ids(truth))
    assert len(labelled) == delivered and labelled <= in_topic
    assert len(in_topic - labelled) <= 50, len(in_topic - labelled)
