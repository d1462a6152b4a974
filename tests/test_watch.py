"""`fraudmon tail` and `fraudmon topics` against a real broker: the lines they print for decisions, dead letters,
verdicts and other records, the filters and limits, following new records, the errors, and consumer group lag."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from click.testing import Result
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.core.config import Settings
from fraudmon.tools.watch import VERDICTS_TOPIC, resolve_topic
from tests.conftest import PROJECT_ROOT, free_port

pytestmark = pytest.mark.integration

# Record timestamps: one second apart from an hour ago, so "the last N" is well defined. Not a fixed date: the
# broker keeps 24 hours (log.retention.hours), and its retention check deletes older records within minutes.
BASE_MS = (int(time.time()) - 3600) * 1000


def decision(i: int, account: str, flag: bool = False) -> dict:
    """A decision as the worker publishes it (stream_app.decision.build_decision), one top feature as `field`."""
    return {
        "transaction_id": f"tx-{i}", "account_id": account, "amount": 10.0 * i + 0.5, "currency": "EUR",
        "event_time": f"2026-11-01T10:00:{i:02d}.000Z", "decided_at": f"2026-11-01T10:00:{i:02d}.010Z",
        "action": "review" if flag else "allow", "decision": "flag" if flag else "pass",
        "risk_score": 99.5 if flag else 12.0, "reasons": ["model", "amount_over_limit"] if flag else [],
        "model": {"version": "v1", "score": 0.9, "threshold": 0.5,
                  "top_features": [{"name": "amount_log", "error": 3.2}, {"field": "hour_sin", "error": 1.1}]},
        "rules": [], "degraded": False, "latency_ms": 1.5,
    }


DEAD_LETTER = {"error": "missing field: amount", "raw": '{"transaction_id": "x"}', "raw_encoding": "utf-8",
               "topic": "transactions", "partition": 2, "offset": 17, "received_at": "2026-11-01T10:00:05.000Z"}


@pytest.fixture
def produce(kafka_bootstrap: str) -> Iterator[Callable[..., None]]:
    """`produce(topic, [(key, value), ...], partition=None)`: values are dicts (sent as JSON) or raw bytes; each
    record's timestamp is one second after the previous one's."""
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    sent = 0

    def send(topic: str, records: list[tuple[str | None, dict | bytes]], partition: int | None = None) -> None:
        nonlocal sent
        for key, value in records:
            payload = value if isinstance(value, bytes) else json.dumps(value).encode()
            producer.send(topic, payload, key=key.encode() if key else None, partition=partition,
                          timestamp_ms=BASE_MS + sent * 1000)
            sent += 1
        producer.flush()

    yield send
    producer.close()


@pytest.fixture
def run(settings: Settings, kafka_bootstrap: str) -> Callable[..., Result]:
    """`run(*args, **env)`: the real `fraudmon` app in process, on the test broker (plus FRAUDMON_* overrides)."""

    def invoke(*args: str, **env: str) -> Result:
        return CliRunner().invoke(app, list(args), env={"FRAUDMON_KAFKA_BOOTSTRAP": kafka_bootstrap, **env})

    return invoke


def lines(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_tail_shows_the_last_records_across_partitions_oldest_first(make_topic, produce, run) -> None:
    topic = make_topic(partitions=6)
    produce(topic, [(f"acc-{i % 3}", decision(i, f"acc-{i % 3}", flag=i % 2 == 1)) for i in range(12)])
    produce(topic, [("acc-9", b"\xff\xfe this is not JSON")])

    out = lines(run("tail", topic, "--last", "3"))

    assert len(out) == 3
    assert out[0] == ("2026-11-01T10:00:10.000Z  acc-1      100.50 EUR  ALLOW   reasons: -  risk 12.000"
                      "  top: amount_log, hour_sin  (tx-10)")
    assert out[1] == ("2026-11-01T10:00:11.000Z  acc-2      110.50 EUR  REVIEW  reasons: model,amount_over_limit"
                      "  risk 99.500  top: amount_log, hour_sin  (tx-11)")
    assert out[2].startswith("acc-9  (not JSON) ") and "this is not JSON" in out[2]
    assert len(lines(run("tail", topic))) == 13  # --last defaults to 20


def test_tail_short_names_dead_letters_verdicts_and_other_values(make_topic, produce, run, settings) -> None:
    flagged, dlq, verdicts = make_topic(), make_topic(), make_topic()
    produce(flagged, [("acc-1", decision(1, "acc-1", flag=True))])
    produce(dlq, [(None, DEAD_LETTER)])
    produce(verdicts, [("acc-1", {"transaction_id": "tx-1", "label": "fraud", "reviewer": "alice"}),
                       ("acc-5", {"k": 1, "nested": {"a": [1, 2]}})])
    env = {"FRAUDMON_TOPICS__FLAGGED": flagged, "FRAUDMON_TOPICS__DEAD_LETTER": dlq}

    assert "(tx-1)" in lines(run("tail", **env))[0]  # flagged is the default
    assert lines(run("tail", "dlq", **env)) == [
        "2026-11-01T10:00:05.000Z  dead letter  transactions/2@17  missing field: amount"]
    assert lines(run("tail", verdicts)) == ["verdict  tx-1  fraud  by alice", 'acc-5  {"k":1,"nested":{"a":[1,2]}}']
    assert resolve_topic(settings, "verdicts") == VERDICTS_TOPIC
    assert resolve_topic(settings, "scores") == settings.topics.scores


def test_tail_escapes_what_an_event_controls(make_topic, produce, run) -> None:
    """An account id or reviewer carrying terminal escapes is printed escaped, never sent to the terminal."""
    topic = make_topic()
    produce(topic, [("acc-1", decision(1, "acc-\x1b[2Jevil", flag=True)),
                    ("acc-1", {"transaction_id": "tx-2", "label": "fraud", "reviewer": "bo\x07b"})])
    out = lines(run("tail", topic))
    assert "acc-\\x1b[2Jevil" in out[0] and "\x1b" not in out[0]
    assert out[1] == "verdict  tx-2  fraud  by bo\\x07b"


def test_tail_account_filter_max_and_from_beginning(make_topic, produce, run) -> None:
    topic = make_topic(partitions=1)
    produce(topic, [("acc-2", decision(0, "acc-2")), (None, decision(1, "acc-2"))])  # the second one by its value
    produce(topic, [("acc-1", decision(i, "acc-1")) for i in range(2, 30)])

    # acc-2's records are 28 records back: the backlog reads further back until it has found them.
    out = lines(run("tail", topic, "--account", "acc-2", "-n", "5"))
    assert [line.split()[-1] for line in out] == ["(tx-0)", "(tx-1)"]
    assert lines(run("tail", topic, "--account", "acc-2", "-n", "1"))[0].endswith("(tx-1)")
    assert [line.split()[-1] for line in lines(run("tail", topic, "--from-beginning", "--max", "3"))] == [
        "(tx-0)", "(tx-1)", "(tx-2)"]
    assert len(lines(run("tail", topic, "--from-beginning"))) == 30  # all of it, not just the last 20
    assert len(lines(run("tail", topic, "--max", "4"))) == 4
    nobody = run("tail", topic, "--account", "acc-404")
    assert lines(nobody) == [] and "no records" in nobody.stderr


def test_tail_json_prints_one_parsable_value_per_line(make_topic, produce, run) -> None:
    topic = make_topic(partitions=1)
    produce(topic, [("acc-1", decision(1, "acc-1", flag=True)), ("acc-1", b"not json"), (None, DEAD_LETTER)])

    result = run("tail", topic, "--json", "--from-beginning")

    values = [json.loads(line) for line in lines(result)]
    assert values == [decision(1, "acc-1", flag=True), DEAD_LETTER]
    assert "skipped a value that is not JSON: partition 0 offset 1: not json" in result.stderr


def test_tail_unknown_topic_and_no_broker_are_clean_errors(make_topic, run) -> None:
    existing = make_topic()
    missing = f"no-such-topic-{uuid.uuid4().hex[:6]}"

    unknown = run("tail", missing)
    assert unknown.exit_code == 2 and isinstance(unknown.exception, SystemExit)
    assert f"topic '{missing}' does not exist" in unknown.stderr and existing in unknown.stderr

    started = time.monotonic()
    down = run("tail", FRAUDMON_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    assert down.exit_code == 2 and isinstance(down.exception, SystemExit)
    assert "no Kafka broker answers" in down.stderr and "fraudmon stack up" in down.stderr
    assert time.monotonic() - started < 15


def test_topics_shows_partitions_messages_and_group_lag(make_topic, produce, run, kafka_bootstrap) -> None:
    topic = make_topic(partitions=3)
    for partition, count in enumerate((4, 3, 3)):
        produce(topic, [("k", {"n": n}) for n in range(count)], partition=partition)
    group = f"watch-test-{uuid.uuid4().hex[:6]}"
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "", -1),  # 2 behind
                     TopicPartition(topic, 1): OffsetAndMetadata(3, "", -1)})  # caught up; partition 2 never read
    consumer.close()

    out = lines(run("topics"))
    assert any(line.split() == [topic, "3", "10"] for line in out)
    assert any(line.split()[:1] + line.split()[2:] == [group, topic, "2"] for line in out)
    assert not any(line.startswith("__") for line in out)

    report = json.loads(run("topics", "--json").stdout)
    assert {"topic": topic, "partitions": 3, "messages": 10} in report["topics"]
    assert [g["lag"] for g in report["groups"] if g["group"] == group] == [{topic: 2}]


def _read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def test_tail_follow_prints_records_produced_after_it_started(make_topic, produce, kafka_bootstrap) -> None:
    topic = make_topic(partitions=3)
    produce(topic, [("acc-1", decision(1, "acc-1"))])
    process = subprocess.Popen(
        [sys.executable, "-m", "fraudmon.cli", "tail", topic, "--follow", "--last", "1"], cwd=PROJECT_ROOT,
        env={**os.environ, "FRAUDMON_KAFKA_BOOTSTRAP": kafka_bootstrap},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as a terminal starts it: a suite started in the background by a shell without job control passes on
        # SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    printed: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, printed), daemon=True).start()
    try:
        assert printed.get(timeout=30).endswith("(tx-1)")  # the backlog: following has begun
        produce(topic, [("acc-2", decision(2, "acc-2", flag=True))])
        assert printed.get(timeout=15).endswith("(tx-2)")
        process.send_signal(signal.SIGINT)  # Ctrl-C ends it quietly
        assert process.wait(timeout=15) == 130
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
