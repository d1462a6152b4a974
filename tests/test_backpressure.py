"""Busy is not down (issue 25, item 1): a Redis that answers late is waited for, and its decisions come late but
complete; only a Redis that refuses, drops the connection, or gives no answer for `redis.unavailable_after_s`
degrades them, and then nothing is lost. On a real redis-server of each test's own (so it can be slowed, paused
and stopped), the store alone and then a real worker on the session's Kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid

import pytest
import redis
from kafka import KafkaProducer

from fraudmon.core.config import Settings
from fraudmon.core.errors import StateUnavailable
from fraudmon.core.events import event_from_dict
from stream_app.aggregates import parse_aggregates
from stream_app.state import make_state_store

from .conftest import free_port
from .test_worker import TEST_RULES, Traffic, collect, metric_value, produce

AGGS = parse_aggregates({
    "payments_60s": {"kind": "count", "by": "account_id", "window": "60s"},
    "payments": {"kind": "count", "by": "account_id", "ttl": "30d"},
})
T0 = 1_763_800_000_000


def event(tx: str, t_s: float = 0.0):
    return event_from_dict({"transaction_id": tx, "account_id": "a", "amount": 10.0, "timestamp": int(T0 + t_s * 1000)})


class RedisServer:
    """A redis-server process of the test's own, with DEBUG allowed."""

    def __init__(self, data_dir) -> None:
        self.port, self.data_dir = free_port(), data_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
                                         "--dir", str(self.data_dir), "--enable-debug-command", "yes"],
                                        stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def in_background(self, *command) -> threading.Thread:
        """Send `command` from another client, without waiting for it."""
        thread = threading.Thread(target=lambda: self.client().execute_command(*command), daemon=True)
        thread.start()
        time.sleep(0.1)  # sent and running before the test's own call
        return thread

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def server(tmp_path):
    running = RedisServer(tmp_path)
    yield running
    running.stop()


def store_on(settings: Settings, url: str, unavailable_after_s: float):
    store = make_state_store(settings.model_copy(update={"redis": settings.redis.model_copy(update={
        "url": url, "key_prefix": f"bp-{uuid.uuid4().hex[:6]}:", "unavailable_after_s": unavailable_after_s})}))
    store.connect()
    return store


def test_a_sleeping_redis_is_waited_for(settings, server):
    store = store_on(settings, server.url, unavailable_after_s=3)
    store.observe(AGGS, [event("before")])
    server.in_background("DEBUG", "SLEEP", "1")
    started = time.monotonic()
    states = store.observe_later(AGGS, [event("late", t_s=1)]).result()
    assert time.monotonic() - started >= 0.8, "the answer came after the sleep"
    assert states == [(1, 1)], "late, and complete"


def test_a_paused_redis_is_waited_for(settings, server):
    store = store_on(settings, server.url, unavailable_after_s=3)
    server.client().execute_command("CLIENT", "PAUSE", 1000, "ALL")
    first, second = store.observe_later(AGGS, [event("p1")]), store.observe_later(AGGS, [event("p2", t_s=1)])
    assert (first.result(), second.result()) == ([(0, 0)], [(1, 1)])


def test_a_redis_busy_with_another_clients_script_is_asked_again(settings, server):
    """Past `busy-reply-threshold`, Redis answers other clients BUSY while a script runs: busy, not down."""
    server.client().config_set("busy-reply-threshold", 100)
    store = store_on(settings, server.url, unavailable_after_s=5)
    busy_loop = "local t = redis.call('TIME') repeat until redis.call('TIME')[1] - t[1] >= 2 return 1"
    server.in_background("EVAL", busy_loop, 0)
    time.sleep(0.2)  # past the threshold: other clients are answered BUSY now
    with pytest.raises(redis.ResponseError, match="BUSY"):
        server.client().ping()
    assert store.observe(AGGS, [event("b1")]) == [(0, 0)]
    assert store.observe_later(AGGS, [event("b2", t_s=1)]).result() == [(1, 1)]


def test_a_redis_that_gives_no_answer_is_unavailable_after_the_configured_seconds(settings, server):
    store = store_on(settings, server.url, unavailable_after_s=1.5)
    os.kill(server.process.pid, signal.SIGSTOP)  # up, but answering nothing (a hung host, a partition)
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="did not answer"):
            store.observe_later(AGGS, [event("unanswered")]).result()
        assert time.monotonic() - started >= 1.4
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert store.observe(AGGS, [event("after", t_s=1)])[0][1] in (0, 1)  # the unanswered call may have run since


def test_a_redis_that_refuses_is_unavailable_at_once(settings, server):
    store = store_on(settings, server.url, unavailable_after_s=5)
    server.stop()
    started = time.monotonic()
    with pytest.raises(StateUnavailable):
        store.observe_later(AGGS, [event("refused")]).result()
    assert time.monotonic() - started < 2, "a refused connection is not waited for"


# ---- a real worker --------------------------------------------------------------------------------------------


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(TEST_RULES)
    return path


def _history(server: RedisServer, account: str) -> int:
    """The account's recorded events (the `history` aggregate of TEST_RULES: count, ttl 30d)."""
    return int(server.client().hget(f"fm:{{account_id:{account}}}:h2592000000", "n") or 0)


@pytest.mark.integration
def test_a_slow_redis_makes_decisions_late_never_degraded(kafka_bootstrap, worker_topics, start_worker, rules_file,
                                                          server):
    worker = start_worker(worker_topics, env={
        "FRAUDMON_RULES": str(rules_file), "FRAUDMON_REDIS_URL": server.url,
        "FRAUDMON_REDIS__UNAVAILABLE_AFTER_S": "5"})
    traffic = Traffic.build(normal_accounts=40)
    half = len(traffic.events) // 2
    produce(kafka_bootstrap, worker_topics["transactions"], traffic.events[:half])
    assert len(collect(kafka_bootstrap, worker_topics["scores"], half)) == half

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.partitions_for(worker_topics["transactions"])  # connected: the events go out as Redis falls asleep
    sleeper = server.in_background("DEBUG", "SLEEP", "2")  # Redis busy for 2 s, under the 5 s of patience
    for e in traffic.events[half:]:
        producer.send(worker_topics["transactions"], key=e["account_id"].encode(), value=json.dumps(e).encode())
    producer.flush()
    producer.close()
    sleeper.join()
    decisions = collect(kafka_bootstrap, worker_topics["scores"], len(traffic.events))

    assert sorted(d["transaction_id"] for d in decisions) == sorted(e["transaction_id"] for e in traffic.events)
    assert not [d for d in decisions if d["degraded"]], "late, not degraded"
    by_tx = {d["transaction_id"]: d for d in decisions}
    assert max(by_tx[e["transaction_id"]]["latency_ms"] for e in traffic.events[half:]) >= 1000, \
        "a batch waited for the sleeping Redis"
    for rule_id in ("velocity", "new_country", "new_counterparty_amount", "amount_zscore"):  # one account's state
        tx_ids = traffic.expected[rule_id]
        assert all(rule_id in {h["id"] for h in by_tx[tx]["rules"] + by_tx[tx]["shadow_rules"]} for tx in tx_ids)
    assert _history(server, "acc-velo") == 15
    text = worker.metrics_text()
    assert metric_value(text, "fraud_degraded_total", 'cause="redis_unavailable"') == 0
    assert metric_value(text, "fraud_latency_budget_exceeded_total") > 0, "over the budget, and counted"


@pytest.mark.integration
def test_a_redis_that_stops_answering_degrades_after_the_configured_seconds_and_loses_nothing(
        kafka_bootstrap, worker_topics, start_worker, rules_file, server):
    worker = start_worker(worker_topics, env={
        "FRAUDMON_RULES": str(rules_file), "FRAUDMON_REDIS_URL": server.url,
        "FRAUDMON_REDIS__UNAVAILABLE_AFTER_S": "2", "FRAUDMON_WORKER__REDIS_RETRY_AFTER_S": "0.5"})
    before = Traffic.build(normal_accounts=10)
    produce(kafka_bootstrap, worker_topics["transactions"], before.events)
    assert len(collect(kafka_bootstrap, worker_topics["scores"], len(before.events))) == len(before.events)

    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        outage = [dict(e, transaction_id=e["transaction_id"] + "-stopped") for e in before.events[:60]]
        produce(kafka_bootstrap, worker_topics["transactions"], outage)
        seen = collect(kafka_bootstrap, worker_topics["scores"], len(before.events) + len(outage))
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    during = sorted((d for d in seen if d["transaction_id"].endswith("-stopped")), key=lambda d: d["decided_at"])
    assert len(during) == len(outage), "every event is decided while Redis does not answer"
    assert all(d["degraded"] and "skipped:redis_unavailable" in d["reasons"] for d in during)
    assert during[0]["latency_ms"] >= 1900, "the first batch waited the configured 2 s before degrading"

    after = [dict(e, transaction_id=e["transaction_id"] + "-after") for e in before.events[:30]]
    time.sleep(1.0)  # past the retry wait
    produce(kafka_bootstrap, worker_topics["transactions"], after)
    total = len(before.events) + len(outage) + len(after)
    decisions = collect(kafka_bootstrap, worker_topics["scores"], total)
    assert len({d["transaction_id"] for d in decisions}) == len(decisions) == total, "nothing lost, nothing twice"
    assert not any(d["degraded"] for d in decisions if d["transaction_id"].endswith("-after"))
    client = server.client()
    assert all(client.exists(f"fm:{{transaction_id:{e['transaction_id']}}}:dd") for e in outage), \
        "the events decided while Redis was away are recorded once it answers"
    accounts = {e["account_id"] for e in before.events}
    for account in accounts:
        assert _history(server, account) == sum(1 for e in before.events + outage + after
                                                if e["account_id"] == account), account
    assert "fraud_state_backlog_events 0.0" in worker.metrics_text()
