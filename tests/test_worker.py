"""The worker end to end on a real Kafka and a real Redis: decisions, dead letters, rules, metrics,
Redis outages, redelivery, scale-out, start-up checks, and no TensorFlow in the worker process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from fraudmon.tools.harness import group_members
from tests.conftest import PROJECT_ROOT

from .conftest import free_port

pytestmark = pytest.mark.integration

TEST_RULES = """
aggregates:
  n_60s: {kind: count, by: account_id, window: 60s}
  history: {kind: count, by: account_id, ttl: 30d}
  country_seen: {kind: seen, by: account_id, of: country, ttl: 30d}
  accounts_on_ip: {kind: count_distinct, by: ip, of: account_id, window: 10m}
  account_on_ip: {kind: seen, by: ip, of: account_id, window: 10m}
  counterparty_seen: {kind: seen, by: account_id, of: counterparty_id, ttl: 30d}
  mean: {kind: mean, by: account_id, of: amount, ttl: 30d}
  std: {kind: std, by: account_id, of: amount, ttl: 30d}
lists:
  blocked_ips: {}
rules:
  - {id: velocity, when: "agg.n_60s + 1 > 10", action: review}
  - {id: new_country, when: "has(event.country) && !agg.country_seen && agg.history >= 3", action: review}
  - {id: ip_fanout, when: "has(event.ip) && agg.accounts_on_ip + (agg.account_on_ip ? 0 : 1) > 8", action: review}
  - {id: new_counterparty_amount, when: "has(event.counterparty_id) && !agg.counterparty_seen && event.amount >= 1000",
     action: review}
  - id: new_account_amount
    when: >-
      has(event.account_created_at) && event.amount >= 500
      && event.timestamp - event.account_created_at < duration("24h")
    action: review
  - id: amount_zscore
    when: "agg.history >= 5 && event.amount - agg.mean > 6.0 * math.greatest(agg.std, 0.000001 + 0.01 * agg.mean)"
    action: review
    mode: shadow
  - {id: amount_over, when: "event.amount > 10000", action: review}
  - {id: blocked_ip, when: "event.ip in lists.blocked_ips", action: block}
"""

MALFORMED = [b"not json", b"[]", b'{"transaction_id": "m1"}', b'{"transaction_id":"m2","account_id":"a",'
             b'"amount":NaN,"timestamp":1}', b'{"transaction_id":"m3","account_id":"a","amount":1,"timestamp":"x"}',
             b"\xff\xfe\x00", b'{"transaction_id":"m4","account_id":"a","amount":-5,"timestamp":1}']


class Traffic:
    """Crafted events: plain normal traffic plus one pattern per rule type, in event-time order per account."""

    def __init__(self) -> None:
        self.base_ms = int(time.time() * 1000) - 15 * 60 * 1000
        self.events: list[dict] = []
        self.expected: dict[str, set[str]] = {}  # rule id -> transaction ids it must flag

    def add(self, account: str, offset_s: float, amount: float, *, expect: str | None = None, **fields) -> str:
        tx = f"tx-{len(self.events):05d}-{account}"
        event = {
            "transaction_id": tx, "account_id": account, "amount": amount,
            "timestamp": int(self.base_ms + offset_s * 1000), "country": "DE", "channel": "card_present",
            "ip": f"10.1.{len(account) % 250}.{abs(hash(account)) % 250}", "merchant_category": "5411",
            "account_created_at": "2020-01-01T00:00:00Z", **fields,
        }
        self.events.append(event)
        if expect:
            self.expected.setdefault(expect, set()).add(tx)
        return tx

    @classmethod
    def build(cls, normal_accounts: int = 200) -> Traffic:
        t = cls()
        for i in range(normal_accounts):
            for j in range(3):
                t.add(f"acc-normal-{i}", i * 0.5 + j * 200, 20 + (i * 7 + j * 13) % 60, ip=f"10.0.{i // 250}.{i % 250}")
        for j in range(15):
            t.add("acc-velo", 10 + j * 2, 3.0, expect="velocity" if j >= 10 else None, ip="10.9.0.1")
        for j in range(5):
            t.add("acc-travel", 20 + j * 60, 40.0, ip="10.9.0.2")
        t.add("acc-travel", 400, 45.0, country="BR", ip="10.9.0.2", expect="new_country")
        for j in range(12):
            t.add(f"acc-fan-{j}", 30 + j * 5, 25.0, ip="198.51.100.66", expect="ip_fanout" if j >= 8 else None)
        for j in range(3):
            t.add("acc-payer", 40 + j * 30, 50.0, channel="transfer", counterparty_id="cp-usual", ip="10.9.0.3")
        t.add("acc-payer", 200, 5000.0, channel="transfer", counterparty_id="cp-new", ip="10.9.0.3",
              expect="new_counterparty_amount")
        created = datetime.fromtimestamp((t.base_ms - 3600_000) / 1000, tz=UTC).isoformat()
        t.add("acc-fresh", 50, 900.0, account_created_at=created, ip="10.9.0.4", expect="new_account_amount")
        for j in range(8):
            t.add("acc-habit", 60 + j * 20, 50.0 + (j % 3), ip="10.9.0.5")
        t.add("acc-habit", 300, 2000.0, ip="10.9.0.5", expect="amount_zscore")
        t.add("acc-big", 70, 20000.0, ip="10.9.0.6", expect="amount_over")
        t.events.sort(key=lambda e: e["timestamp"])
        return t


def produce(bootstrap: str, topic: str, events: list[dict], malformed: list[bytes] = ()) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    for event in events:
        producer.send(topic, key=event["account_id"].encode(), value=json.dumps(event).encode())
    for i, raw in enumerate(malformed):
        producer.send(topic, key=f"bad-{i}".encode(), value=raw)
    producer.flush()
    producer.close()


def collect(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    consumer.seek_to_beginning()
    values: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            values.extend(json.loads(r.value) for r in records)
        if len(values) >= expected:
            time.sleep(1.0)  # anything beyond the expected count (duplicates) would show up now
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(json.loads(r.value) for r in records)
            break
    consumer.close()
    return values


def metric_value(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix!r} not on /metrics")


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(TEST_RULES)
    return path


def test_stream_decisions_dead_letters_rules_and_metrics(kafka_bootstrap, worker_topics, start_worker, rules_file):
    traffic = Traffic.build()
    worker = start_worker(worker_topics, env={"FRAUDMON_RULES": str(rules_file)})
    # Accounts land on different partitions, which the worker takes in no set order: the IP fan-out's last
    # accounts go once the first ones are decided, so that the rule sees them in event-time order.
    late = [e for e in traffic.events if e["transaction_id"] in traffic.expected["ip_fanout"]]
    early = [e for e in traffic.events if e not in late]
    produce(kafka_bootstrap, worker_topics["transactions"], early, MALFORMED)
    collect(kafka_bootstrap, worker_topics["scores"], len(early))
    produce(kafka_bootstrap, worker_topics["transactions"], late)

    decisions = collect(kafka_bootstrap, worker_topics["scores"], len(traffic.events))
    letters = collect(kafka_bootstrap, worker_topics["dead_letter"], len(MALFORMED), timeout_s=20)
    by_tx = {d["transaction_id"]: d for d in decisions}
    assert len(decisions) == len(by_tx) == len(traffic.events), "exactly one decision per valid event"
    assert set(by_tx) == {e["transaction_id"] for e in traffic.events}

    assert len(letters) == len(MALFORMED)
    assert all(letter["error"] and letter["topic"] == worker_topics["transactions"] for letter in letters)
    assert all(isinstance(letter["offset"], int) and 0 <= letter["partition"] < 6 for letter in letters)
    assert any(letter["error"].startswith("amount: NaN") for letter in letters)

    for rule_id, tx_ids in traffic.expected.items():
        for tx in tx_ids:
            hits = {hit["id"] for hit in by_tx[tx]["rules"] + by_tx[tx]["shadow_rules"]}
            assert rule_id in hits, f"{rule_id} should fire on {tx}: {by_tx[tx]}"
    shadowed = [by_tx[tx] for tx in traffic.expected["amount_zscore"]]
    assert all("amount_zscore" not in d["reasons"] + [h["id"] for h in d["rules"]] for d in shadowed), \
        "a shadow rule is reported, never acted on"
    normal = [d for d in decisions if d["account_id"].startswith("acc-normal")]
    assert normal and not [d for d in normal if d["rules"] or d["shadow_rules"]], \
        "no rule fires on plain normal traffic"
    assert all(d["action"] == ("allow" if d["decision"] == "pass" else "review") for d in decisions)
    flagged = collect(kafka_bootstrap, worker_topics["flagged"], 1, timeout_s=10)
    assert {d["transaction_id"] for d in flagged} == {tx for tx, d in by_tx.items() if d["decision"] == "flag"}

    text = worker.metrics_text()
    assert metric_value(text, "fraud_input_messages_total") == len(traffic.events) + len(MALFORMED)
    assert metric_value(text, "fraud_events_total", 'outcome="scored"') == len(traffic.events)
    assert metric_value(text, "fraud_events_total", 'outcome="dead_letter"') == len(MALFORMED)
    flags = sum(1 for d in decisions if d["decision"] == "flag")
    assert metric_value(text, "fraud_decisions_total", 'action="review",decision="flag"') == flags
    assert metric_value(text, "fraud_decisions_total", 'action="allow",decision="pass"') == len(decisions) - flags
    assert metric_value(text, "fraud_rule_hits_total", 'action="review",rule="amount_over"') == 1
    assert metric_value(text, "fraud_end_to_end_seconds_count") == len(traffic.events)


def test_redis_outage_degrades_then_recovers(kafka_bootstrap, worker_topics, start_worker, rules_file, tmp_path):
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        redis_url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(redis_url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        worker = start_worker(worker_topics, env={"FRAUDMON_RULES": str(rules_file), "FRAUDMON_REDIS_URL": redis_url,
                                                  "FRAUDMON_WORKER__REDIS_RETRY_AFTER_S": "0.5"})
        healthy = Traffic.build(normal_accounts=20)
        produce(kafka_bootstrap, worker_topics["transactions"], healthy.events)
        first = collect(kafka_bootstrap, worker_topics["scores"], len(healthy.events))
        assert len(first) == len(healthy.events) and not any(d["degraded"] for d in first)

        server.terminate()
        server.wait(timeout=10)
        outage = [dict(e, transaction_id=e["transaction_id"] + "-outage") for e in healthy.events[:50]]
        produce(kafka_bootstrap, worker_topics["transactions"], outage)
        seen = collect(kafka_bootstrap, worker_topics["scores"], len(first) + len(outage))
        during = [d for d in seen if d["transaction_id"].endswith("-outage")]
        assert len(during) == len(outage), "decisions keep flowing while Redis is down"
        assert all(d["degraded"] and "skipped:redis_unavailable" in d["reasons"] for d in during)

        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
                                  stdout=subprocess.DEVNULL)
        time.sleep(1.5)
        after = Traffic.build(normal_accounts=5)
        after.events = [dict(e, transaction_id=e["transaction_id"] + "-after") for e in after.events]
        produce(kafka_bootstrap, worker_topics["transactions"], after.events)
        total = len(first) + len(outage) + len(after.events)
        recovered = {d["transaction_id"]: d for d in collect(kafka_bootstrap, worker_topics["scores"], total)}
        later = [recovered[e["transaction_id"]] for e in after.events]
        assert not any(d["degraded"] for d in later), "full checks again without a restart"
        velocity_tx = next(tx + "-after" for tx in after.expected["velocity"])
        assert "velocity" in {h["id"] for h in recovered[velocity_tx]["rules"]}, "state-based rules work again"
        client = redis.Redis.from_url(redis_url)
        assert all(client.exists(f"fm:{{transaction_id:{e['transaction_id']}}}:dd") for e in outage), \
            "events decided during the outage are recorded in rule state once Redis is back"
        assert "fraud_state_backlog_events 0.0" in worker.metrics_text()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_redelivered_events_count_once(kafka_bootstrap, worker_topics, start_worker, rules_file):
    start_worker(worker_topics, env={"FRAUDMON_RULES": str(rules_file)})
    now_ms = int(time.time() * 1000)
    burst = [{"transaction_id": f"redeliver-{i}", "account_id": "acc-redeliver", "amount": 5.0,
              "timestamp": now_ms - 20_000 + i * 1000, "ip": "10.8.0.1"} for i in range(9)]
    produce(kafka_bootstrap, worker_topics["transactions"], burst)
    produce(kafka_bootstrap, worker_topics["transactions"], burst)  # at-least-once delivery: the same events again
    probe = {"transaction_id": "redeliver-probe", "account_id": "acc-redeliver", "amount": 5.0,
             "timestamp": now_ms - 5_000, "ip": "10.8.0.1"}
    produce(kafka_bootstrap, worker_topics["transactions"], [probe])
    decisions = collect(kafka_bootstrap, worker_topics["scores"], 19)
    probe_decision = next(d for d in decisions if d["transaction_id"] == "redeliver-probe")
    # 9 earlier events + the probe = 10, not above max_count 10; counted twice it would be 19 and fire.
    assert "velocity" not in {h["id"] for h in probe_decision["rules"]}
    repeats = [d for d in decisions if d["transaction_id"] == "redeliver-3"]
    assert len(repeats) == 2 and repeats[0]["rules"] == repeats[1]["rules"], "a redelivery is judged the same"


def test_two_workers_split_partitions_and_decide_each_event_once(
    kafka_bootstrap, settings, worker_topics, start_worker, rules_file
):
    group = "test-two-workers"
    env = {"FRAUDMON_RULES": str(rules_file)}
    start_worker(worker_topics, group=group, env=env)
    start_worker(worker_topics, group=group, env=env, wait=False)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    deadline = time.monotonic() + 60
    assignments: list[set[int]] = []
    while time.monotonic() < deadline:
        state, members = group_members(admin, group)
        assignments = [set(member.get(worker_topics["transactions"], [])) for member in members]
        if state == "Stable" and len(assignments) == 2 and all(assignments):
            break
        time.sleep(0.5)
    admin.close()
    assert len(assignments) == 2 and all(assignments), f"both workers own partitions: {assignments}"
    assert assignments[0].isdisjoint(assignments[1]) and len(assignments[0] | assignments[1]) == 6

    traffic = Traffic.build(normal_accounts=300)
    produce(kafka_bootstrap, worker_topics["transactions"], traffic.events)
    decisions = collect(kafka_bootstrap, worker_topics["scores"], len(traffic.events))
    assert len(decisions) == len({d["transaction_id"] for d in decisions}) == len(traffic.events)


@pytest.mark.parametrize(
    ("env_name", "content", "message"),
    [
        ("FRAUDMON_MODEL", None, "does not exist"),
        ("FRAUDMON_MODEL", b"this is not an onnx graph", "onnx"),
        ("FRAUDMON_RULES", b"rules: [{id: x, when: 'event.teleport', action: block}]", "teleport"),
    ],
)
def test_startup_refuses_bad_model_or_rules_with_a_message(tmp_path, settings, env_name, content, message):
    import os

    if env_name == "FRAUDMON_MODEL":
        path = tmp_path / "broken.onnx"
        if content is not None:
            path.write_bytes(content)
            shutil.copy(PROJECT_ROOT / "models" / "default.json", tmp_path / "broken.json")
    else:
        path = tmp_path / "rules.yaml"
        path.write_bytes(content)
    env = {**os.environ, env_name: str(path), "FRAUDMON_REDIS_URL": settings.redis.url}
    result = subprocess.run([sys.executable, "-m", "fraudmon.cli", "worker"], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message.lower() in result.stderr.lower(), result.stderr


def test_worker_process_never_imports_tensorflow(settings):
    import os

    code = (
        "import sys; import stream_app.app, stream_app.replay, fraudmon.cli; stream_app.app.app; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "FRAUDMON_REDIS_URL": settings.redis.url, "FRAUDMON_METRICS_PORT": str(free_port()),
           "FRAUDMON_WORKER__WEB_PORT": "0"}
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_app_module_does_no_work(tmp_path):
    """`import stream_app.app` reads no settings and builds nothing; `stream_app.app.app` (Faust's `-A`) builds
    the app, and a configuration that cannot start ends the process with exit code 2 and one line."""
    import os

    env = {**os.environ, "FRAUDMON_MODEL": str(tmp_path / "missing.onnx")}
    imported = subprocess.run([sys.executable, "-c", "import stream_app.app as a; print('app' in vars(a))"],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert (imported.returncode, imported.stdout, imported.stderr) == (0, "False\n", "")
    built = subprocess.run([sys.executable, "-c", "import stream_app.app; stream_app.app.app"], cwd=PROJECT_ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert built.returncode == 2, built.stderr[-2000:]
    assert "fraud-monitor worker cannot start" in built.stderr and "missing.onnx" in built.stderr
    assert "Traceback" not in built.stderr


@pytest.mark.parametrize(("env", "bind", "data_dir"), [
    ({}, "127.0.0.1", "{stack}/faust"),
    ({"FRAUDMON_WORKER__WEB_BIND": "0.0.0.0", "FRAUDMON_WORKER__DATA_DIR": "{tmp}/own"}, "0.0.0.0", "{tmp}/own"),
])
def test_faust_web_server_is_local_and_its_data_follows_the_stack(settings, tmp_path, env, bind, data_dir):
    """Faust's web server listens on `worker.web_bind` (this host only unless set), and its data directory is
    `worker.data_dir` or `faust/` in `stack.data_dir`, never the working directory's `.stack`."""
    import os

    stack = tmp_path / "stack"
    code = ("from fraudmon.core.config import load_settings\nfrom stream_app.app import create_app\n"
            "app = create_app(load_settings())\nprint(app.conf.web_bind, app.conf.datadir)")
    full = {**os.environ, "FRAUDMON_REDIS_URL": settings.redis.url, "FRAUDMON_METRICS_PORT": str(free_port()),
            "FRAUDMON_WORKER__WEB_PORT": str(free_port()), "FRAUDMON_STACK__DATA_DIR": str(stack),
            **{name: value.format(tmp=tmp_path) for name, value in env.items()}}
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=full, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [bind, data_dir.format(stack=stack, tmp=tmp_path)]
    assert Path(data_dir.format(stack=stack, tmp=tmp_path)).is_dir()


def test_a_fresh_brokers_coordinator_lookup_is_not_an_error(caplog):
    """aiokafka logs "Group Coordinator Request failed: [Error 15] CoordinatorNotAvailableError" at error level
    while a fresh broker creates its offsets topic, then retries: the worker logs it at debug for the first
    seconds, as a warning after that, and lets every other lookup failure through as an error."""
    import logging

    from aiokafka import errors

    from stream_app.app import _QuietCoordinatorLookup

    logger = logging.getLogger("aiokafka.consumer.group_coordinator")
    quiet = _QuietCoordinatorLookup(quiet_s=3600)
    logger.addFilter(quiet)
    try:
        with caplog.at_level(logging.DEBUG, logger=logger.name):
            logger.error("Group Coordinator Request failed: %s", errors.CoordinatorNotAvailableError())
            logger.error("Group Coordinator Request failed: %s", errors.KafkaConnectionError())
            quiet.quiet_s = 0
            logger.error("Group Coordinator Request failed: %s", errors.CoordinatorNotAvailableError())
    finally:
        logger.removeFilter(quiet)
    assert [(r.levelname, r.args[0].__class__.__name__) for r in caplog.records] == [
        ("DEBUG", "GroupCoordinatorNotAvailableError"), ("ERROR", "KafkaConnectionError"),
        ("WARNING", "GroupCoordinatorNotAvailableError")]


def test_the_worker_puts_the_root_logger_back_at_its_level_after_fausts_spinner():
    """Faust's worker (levels WARNING and above) sets the root logger to DEBUG for its start-up spinner: aiokafka's
    debug lines on every fetch and send were built and handled for nothing (6% of the worker's samples at 1,000
    events/s)."""
    import logging

    from faust.utils.terminal.spinners import Spinner, SpinnerHandler

    from stream_app.app import restore_log_level

    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    kept = logging.StreamHandler()
    try:
        root.handlers[:] = [kept, SpinnerHandler(Spinner())]
        root.setLevel(logging.DEBUG)
        assert logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
        restore_log_level("warning")
        assert root.level == logging.WARNING and root.handlers == [kept]
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.mark.parametrize("batch_fetch", ["true", "false"])
def test_worker_consumer_fetches_with_the_configured_wait(settings, batch_fetch):
    """Faust fixes aiokafka's fetch wait at 1,500 ms; a fetch for idle partitions (verdicts) then held back the
    busy ones for that long. The worker's consumer must use `worker.fetch_max_wait_ms` instead, on both paths."""
    import os

    code = (
        "import asyncio, stream_app.app as a\n"
        "async def main():\n"
        "    thread = a.app.consumer._thread\n"
        "    consumer = thread._create_worker_consumer(a.app.transport)\n"
        "    print(type(thread).__name__, consumer._fetch_max_wait_ms)\n"
        "asyncio.run(main())"
    )
    env = {**os.environ, "FRAUDMON_REDIS_URL": settings.redis.url, "FRAUDMON_METRICS_PORT": str(free_port()),
           "FRAUDMON_WORKER__WEB_PORT": "0", "FRAUDMON_WORKER__FETCH_MAX_WAIT_MS": "37",
           "FRAUDMON_WORKER__BATCH_FETCH": batch_fetch}
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[-2:] == ["ConsumerThread", "37"], result.stdout


def test_faust_per_message_path_decides_too(kafka_bootstrap, worker_topics, start_worker):
    """`worker.batch_fetch: false` takes Faust's stream and agent instead of the batch hand-off."""
    start_worker(worker_topics, env={"FRAUDMON_WORKER__BATCH_FETCH": "false"})
    now_ms = int(time.time() * 1000)
    events = [{"transaction_id": f"per-message-{i}", "account_id": f"acc-{i % 7}", "amount": 5.0 + i,
               "timestamp": now_ms} for i in range(60)]
    produce(kafka_bootstrap, worker_topics["transactions"], events)
    decisions = collect(kafka_bootstrap, worker_topics["scores"], 60)
    assert sorted(d["transaction_id"] for d in decisions) == sorted(e["transaction_id"] for e in events)


def test_worker_waits_for_redis_at_start_then_serves(kafka_bootstrap, worker_topics, start_worker, tmp_path):
    port = free_port()
    worker = start_worker(worker_topics, wait=False, env={"FRAUDMON_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    deadline = time.monotonic() + 60
    while "rule state store unreachable" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "rule state store unreachable" in worker.log() and "retrying" in worker.log()
    assert worker.process.poll() is None, "an unreachable Redis at start is retried, not fatal"
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        event = {"transaction_id": "after-redis", "account_id": "acc-late", "amount": 10.0,
                 "timestamp": int(time.time() * 1000)}
        produce(kafka_bootstrap, worker_topics["transactions"], [event])
        [decision] = collect(kafka_bootstrap, worker_topics["scores"], 1, timeout_s=90)
        assert decision["transaction_id"] == "after-redis" and not decision["degraded"]
        assert "rule state store answers now" in worker.log()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_json_logs_on_request_cover_faust_too(worker_topics, start_worker):
    worker = start_worker(worker_topics, env={"FRAUDMON_LOG_JSON": "true"})
    lines = [line for line in worker.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object, Faust's own included
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["logger"].startswith("faust") for r in records) and any(r["logger"] == "stream_app" for r in records)


def test_startup_refuses_a_busy_metrics_port_naming_the_setting(settings):
    import os
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "FRAUDMON_REDIS_URL": settings.redis.url, "FRAUDMON_METRICS_PORT": str(port),
               "FRAUDMON_WORKER__WEB_PORT": "0"}
        for command in (["-m", "fraudmon.cli", "worker"], ["-m", "faust", "-A", "stream_app.app", "worker"]):
            result = subprocess.run([sys.executable, *command], cwd=PROJECT_ROOT, env=env, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 2, result.stderr[-2000:]
            assert f"port {port} is not free" in result.stderr and "FRAUDMON_METRICS_PORT" in result.stderr


def test_faust_command_line_starts_the_worker_and_it_decides(settings, kafka_bootstrap, worker_topics, tmp_path):
    import os

    from fraudmon.tools.harness import stop_process, wait_for_group

    group = f"faust-cli-{time.monotonic_ns()}"
    env = {**os.environ, "FRAUDMON_KAFKA_BOOTSTRAP": kafka_bootstrap, "FRAUDMON_REDIS_URL": settings.redis.url,
           "FRAUDMON_TOPICS__TRANSACTIONS": worker_topics["transactions"],
           "FRAUDMON_TOPICS__SCORES": worker_topics["scores"], "FRAUDMON_TOPICS__FLAGGED": worker_topics["flagged"],
           "FRAUDMON_TOPICS__DEAD_LETTER": worker_topics["dead_letter"], "FRAUDMON_WORKER__APP_ID": group,
           "FRAUDMON_METRICS_PORT": str(free_port()), "FRAUDMON_WORKER__WEB_PORT": str(free_port())}
    log = (tmp_path / "faust.log").open("wb")
    process = subprocess.Popen([str(Path(sys.executable).parent / "faust"), "-A", "stream_app.app", "worker", "-l",
                                "info", "--web-port", env["FRAUDMON_WORKER__WEB_PORT"]],
                               cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_group(settings, group, timeout_s=90)
        event = {"transaction_id": "via-faust-cli", "account_id": "acc-cli", "amount": 12.5,
                 "timestamp": int(time.time() * 1000)}
        produce(kafka_bootstrap, worker_topics["transactions"], [event])
        [decision] = collect(kafka_bootstrap, worker_topics["scores"], 1, timeout_s=60)
        assert decision["transaction_id"] == "via-faust-cli"
        assert process.poll() is None
    finally:
        stop_process(process)
    assert "Traceback" not in (tmp_path / "faust.log").read_text(errors="replace")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRAUDMON_KAFKA_BOOTSTRAP": "127.0.0.1:{port}"}, "did not answer for 3s"),
        ({"FRAUDMON_REDIS_URL": "redis://127.0.0.1:{port}/0"}, "gave up after 3s"),
        ({"FRAUDMON_KAFKA_BOOTSTRAP": "localhost"}, "kafka.bootstrap_servers"),
        ({"FRAUDMON_REDIS_URL": "http://127.0.0.1:6379"}, "redis.url"),
    ],
)
def test_startup_gives_up_cleanly_on_unreachable_or_malformed_addresses(settings, env, message):
    import os

    env = {name: value.format(port=free_port()) for name, value in env.items()}
    full = {**os.environ, "FRAUDMON_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers,
            "FRAUDMON_REDIS_URL": settings.redis.url, "FRAUDMON_WORKER__STARTUP_TIMEOUT_S": "3",
            "FRAUDMON_METRICS_PORT": str(free_port()), "FRAUDMON_WORKER__WEB_PORT": "0", **env}
    result = subprocess.run([sys.executable, "-m", "fraudmon.cli", "worker"], cwd=PROJECT_ROOT, env=full,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    if "did not answer" in message or "gave up" in message:
        assert "fraudmon stack up" in result.stderr


def test_worker_processes_share_the_partitions_and_stop_together(settings, kafka_bootstrap, worker_topics, tmp_path):
    import os
    import signal

    from kafka import KafkaAdminClient

    from fraudmon.tools.harness import group_members, wait_for_group

    group = f"processes-{time.monotonic_ns()}"
    env = {**os.environ, "FRAUDMON_KAFKA_BOOTSTRAP": kafka_bootstrap, "FRAUDMON_REDIS_URL": settings.redis.url,
           "FRAUDMON_TOPICS__TRANSACTIONS": worker_topics["transactions"],
           "FRAUDMON_TOPICS__SCORES": worker_topics["scores"], "FRAUDMON_TOPICS__FLAGGED": worker_topics["flagged"],
           "FRAUDMON_TOPICS__DEAD_LETTER": worker_topics["dead_letter"], "FRAUDMON_WORKER__APP_ID": group,
           "FRAUDMON_WORKER__WEB_PORT": "0", "FRAUDMON_LATENCY_BUDGET_MS": "500"}
    base = free_port()
    log = (tmp_path / "supervisor.log").open("wb")
    parent = subprocess.Popen([sys.executable, "-m", "fraudmon.cli", "worker", "--processes", "2", "--metrics-port",
                               str(base)], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_group(settings, group, timeout_s=120, members=2)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        _, members = group_members(admin, group)
        admin.close()
        held = sorted(p for member in members for p in member.get(worker_topics["transactions"], []))
        assert held == list(range(6)) and all(members), "two processes split the six partitions"
        now_ms = int(time.time() * 1000)
        events = [{"transaction_id": f"proc-{i}", "account_id": f"acc-proc-{i % 30}", "amount": 10.0 + i,
                   "timestamp": now_ms - 1000 + i} for i in range(300)]
        produce(kafka_bootstrap, worker_topics["transactions"], events)
        decisions = collect(kafka_bootstrap, worker_topics["scores"], len(events))
        assert sorted(d["transaction_id"] for d in decisions) == sorted(e["transaction_id"] for e in events)
    finally:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 0
    for port in (base, base + 1):  # the children are gone with the parent
        with pytest.raises(OSError):
            import urllib.request

            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_list_entry_reaches_a_running_worker_within_two_seconds(kafka_bootstrap, worker_topics, start_worker,
                                                                   rules_file, settings):
    """`fraudmon lists add blocked_ips 203.0.113.7` on a running worker: an event from that IP sent 2 s later is
    blocked; after `lists remove`, the next one 2 s later is not."""
    from fraudmon.tools import lists as lists_tool

    run = uuid.uuid4().hex[:8]
    topics = settings.topics.model_copy(update={"lists": f"lists-{run}", "lists_audit": f"lists-audit-{run}"})
    list_settings = settings.model_copy(update={"topics": topics})
    worker = start_worker(worker_topics, env={"FRAUDMON_RULES": str(rules_file),
                                              "FRAUDMON_TOPICS__LISTS": topics.lists,
                                              "FRAUDMON_TOPICS__LISTS_AUDIT": topics.lists_audit})
    now_ms = int(time.time() * 1000)

    def send(tag: str) -> None:
        produce(kafka_bootstrap, worker_topics["transactions"], [{
            "transaction_id": f"list-{tag}", "account_id": f"acc-list-{tag}", "amount": 12.0,
            "timestamp": now_ms, "ip": "203.0.113.7"}])

    send("before")
    collect(kafka_bootstrap, worker_topics["scores"], 1)
    lists_tool.add(list_settings, "blocked_ips", "203.0.113.7", ttl="1h", reason="card testing", author="test")
    time.sleep(2.0)
    send("added")
    collect(kafka_bootstrap, worker_topics["scores"], 2)
    lists_tool.remove(list_settings, "blocked_ips", "203.0.113.7", reason="false alarm", author="test")
    time.sleep(2.0)
    send("removed")
    decisions = {d["transaction_id"]: d for d in collect(kafka_bootstrap, worker_topics["scores"], 3)}
    assert decisions["list-before"]["action"] != "block"
    assert decisions["list-added"]["action"] == "block" and decisions["list-added"]["reasons"] == ["blocked_ip"]
    assert decisions["list-added"]["decision"] == "flag" and decisions["list-added"]["context"]["ip"] == "203.0.113.7"
    assert decisions["list-removed"]["action"] != "block"
    text = worker.metrics_text()
    assert metric_value(text, "fraud_rule_hits_total", 'action="block",rule="blocked_ip"') == 1
    assert metric_value(text, "fraud_decisions_total", 'action="block",decision="flag"') == 1
