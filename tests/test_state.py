"""Contract tests run against both state stores: Redis (a real redis-server) and the in-process one. The
aggregates' own semantics are tested in test_aggregates.py."""

from __future__ import annotations

import uuid

import pytest
import redis

from fraudmon.core.errors import StateUnavailable
from fraudmon.core.events import event_from_dict
from stream_app.aggregates import parse_aggregates
from stream_app.state import InMemoryStateStore, RedisStateStore, StateFailure

AGGS = parse_aggregates({
    "payments_60s": {"kind": "count", "by": "account_id", "window": "60s"},
    "payments": {"kind": "count", "by": "account_id", "ttl": "30d"},
    "amount_mean": {"kind": "mean", "by": "account_id", "of": "amount", "ttl": "30d"},
    "amount_std": {"kind": "std", "by": "account_id", "of": "amount", "ttl": "30d"},
    "country_seen": {"kind": "seen", "by": "account_id", "of": "country", "ttl": "30d"},
    "accounts_on_ip": {"kind": "count_distinct", "by": "ip", "of": "account_id", "window": "10m"},
    "same_id_before": {"kind": "count", "by": "transaction_id", "ttl": "1h"},
})
VELOCITY, COUNT, MEAN, STD, COUNTRY_SEEN, ACCOUNTS_ON_IP, SAME_ID = range(7)
T0 = 1_763_800_000_000


def event(tx: str, account: str = "a", t_s: float = 0.0, amount: float = 10.0, **fields):
    return event_from_dict({"transaction_id": tx, "account_id": account, "amount": amount,
                            "timestamp": int(T0 + t_s * 1000), **fields})


@pytest.fixture(params=["redis", "memory"])
def store(request):
    if request.param == "memory":
        return InMemoryStateStore()
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    return RedisStateStore(client, key_prefix=f"test-{uuid.uuid4().hex[:8]}:")


def test_each_event_is_judged_against_the_state_before_it(store):
    states = store.observe(AGGS, [event("t1", amount=10), event("t2", t_s=1, amount=20),
                                  event("t3", t_s=2, amount=30)])
    assert [s[COUNT] for s in states] == [0, 1, 2]
    assert [s[VELOCITY] for s in states] == [0, 1, 2]
    assert (states[2][MEAN], states[2][STD]) == (15.0, 5.0)


def test_state_carries_across_batches_and_windows_expire(store):
    store.observe(AGGS, [event(f"t{i}", t_s=i) for i in range(3)])
    later = store.observe(AGGS, [event("late", t_s=30), event("much-later", t_s=200)])
    assert later[0][VELOCITY] == 3
    assert later[1][VELOCITY] == 0, "events older than the window no longer count"
    assert later[1][COUNT] == 4, "history outlives the window"


def test_redelivery_is_recorded_once_and_judged_the_same(store):
    batch = [event(f"t{i}", t_s=i, country="DE") for i in range(3)]
    first = store.observe(AGGS, batch)
    assert store.observe(AGGS, batch) == first
    probe = store.observe(AGGS, [event("probe", t_s=5)])[0]
    assert (probe[COUNT], probe[VELOCITY]) == (3, 3)


def test_accounts_are_independent(store):
    store.observe(AGGS, [event(f"x{i}", "busy", i, country="DE") for i in range(5)])
    quiet = store.observe(AGGS, [event("q1", "quiet", 6, country="DE")])[0]
    assert (quiet[COUNT], quiet[VELOCITY], quiet[COUNTRY_SEEN]) == (0, 0, False)


def test_ip_fanout_counts_distinct_accounts_within_the_window(store):
    states = store.observe(AGGS, [
        event("t1", "a1", 0, ip="198.51.100.1"), event("t2", "a2", 1, ip="198.51.100.1"),
        event("t3", "a1", 2, ip="198.51.100.1"), event("t4", "a3", 3, ip="198.51.100.1"),
        event("t5", "a4", 700, ip="198.51.100.1"), event("t6", "a5", 701, ip="203.0.113.9"),
    ])
    assert [s[ACCOUNTS_ON_IP] for s in states] == [0, 1, 2, 2, 0, 0]


def test_reused_ids_are_new_events(store):
    states = store.observe(AGGS, [event("same-id", t_s=i * 0.001, amount=10 + i) for i in range(4)])
    assert [(s[SAME_ID], s[VELOCITY]) for s in states] == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_observe_later_answers_as_observe(store):
    """Both stores keep the whole `StateStore` protocol: a call sent now and read later, in the order sent."""
    first = store.observe_later(AGGS, [event("l1"), event("l2", t_s=1)])
    dropped = store.observe_later(AGGS, [event("l3", t_s=2)])
    second = store.observe_later(AGGS, [event("l4", t_s=3)])
    assert [s[COUNT] for s in first.result()] == [0, 1]
    dropped.cancel()
    assert second.result()[0][COUNT] == 3, "a dropped call still ran"


def test_remembered_decisions_are_recalled(store):
    store.remember([("tx1", "flag"), ("tx2", "pass")])
    assert (store.recall("tx1"), store.recall("tx2"), store.recall("tx3")) == ("flag", "pass", None)


def test_unreachable_redis_raises_state_unavailable():
    from .conftest import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.05, socket_timeout=0.05)
    with pytest.raises(StateUnavailable, match="Redis did not answer"):
        RedisStateStore(client).observe(AGGS, [event("t1")])
    with pytest.raises(StateUnavailable, match="did not answer"):
        RedisStateStore(client).connect()


def test_script_is_reloaded_after_a_redis_restart(redis_url):
    client = redis.Redis.from_url(redis_url)
    store = RedisStateStore(client, key_prefix=f"flush-{uuid.uuid4().hex[:8]}:")
    store.observe(AGGS, [event("t1")])
    client.script_flush()  # what a restarted Redis looks like to the client: the script cache is empty
    assert store.observe(AGGS, [event("t2", t_s=1)])[0][COUNT] == 1


def test_a_failing_event_fails_alone(redis_url):
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}{{account_id:wrongtype}}:h2592000000", "a string where a hash belongs")
    states = RedisStateStore(client, key_prefix=prefix).observe(
        AGGS, [event("w1", "wrongtype"), event("h1", "healthy"), event("h2", "healthy", t_s=1)])
    assert isinstance(states[0], StateFailure) and "WRONGTYPE" in states[0].reason
    assert [s[COUNT] for s in states[1:]] == [0, 1]


def test_a_refused_script_fails_the_batch_as_state_failures(redis_url, monkeypatch):
    """Redis answered but refused the script (not an outage): every event of the batch is a `StateFailure`."""
    client = redis.Redis.from_url(redis_url)
    store = RedisStateStore(client, key_prefix=f"refused-{uuid.uuid4().hex[:8]}:")

    def refuse(*args, **kwargs):
        raise redis.ResponseError("ERR user_script:1: Script attempted to access a non local key")

    monkeypatch.setattr(store, "_script", refuse)
    states = store.observe(AGGS, [event("r1"), event("r2")])
    assert all(isinstance(s, StateFailure) and "refused" in s.reason for s in states) and len(states) == 2
