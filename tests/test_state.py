"""Contract tests run against both rule-state stores: Redis (a real redis-server) and the in-process one."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
import redis

from fraudmon.core.errors import StateUnavailable
from fraudmon.core.events import event_from_dict
from stream_app.rules import parse_rules
from stream_app.state import InMemoryStateStore, RedisStateStore, StateFailure

RULES = parse_rules({"rules": [
    {"id": "velocity", "type": "velocity", "max_count": 3, "window": "60s"},
    {"id": "fanout", "type": "ip_fanout", "max_accounts": 2, "window": "10m"},
    {"id": "country", "type": "new_country", "min_history": 1},
    {"id": "cp", "type": "new_counterparty_amount", "min_amount": 100},
]})
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
    states = store.observe(RULES, [event("t1", amount=10), event("t2", t_s=1, amount=20),
                                   event("t3", t_s=2, amount=30)])
    assert [s.prior_count for s in states] == [0, 1, 2]
    assert [s.velocity_counts[60_000] for s in states] == [0, 1, 2]
    assert states[2].amount_count == 2 and states[2].amount_mean == 15.0 and states[2].amount_std == 5.0
    assert not any(s.replayed for s in states)


def test_state_carries_across_batches_and_windows_expire(store):
    store.observe(RULES, [event(f"t{i}", t_s=i) for i in range(3)])
    later = store.observe(RULES, [event("late", t_s=30), event("much-later", t_s=200)])
    assert later[0].velocity_counts[60_000] == 3
    assert later[1].velocity_counts[60_000] == 0, "events older than the window no longer count"
    assert later[1].prior_count == 4, "history outlives the velocity window"


def test_redelivery_is_recorded_once_and_judged_the_same(store):
    batch = [event(f"t{i}", t_s=i, country="DE") for i in range(3)]
    first = store.observe(RULES, batch)
    again = store.observe(RULES, batch)
    assert all(s.replayed for s in again)
    assert [(s.prior_count, s.velocity_counts) for s in again] == [(s.prior_count, s.velocity_counts) for s in first]
    probe = store.observe(RULES, [event("probe", t_s=5)])[0]
    assert probe.prior_count == 3 and probe.velocity_counts[60_000] == 3


def test_new_country_and_counterparty(store):
    states = store.observe(RULES, [
        event("t1", country="DE", counterparty_id="cp-1"),
        event("t2", t_s=1, country="DE", counterparty_id="cp-1"),
        event("t3", t_s=2, country="BR", counterparty_id="cp-2"),
    ])
    assert states[0].country_seen is False and states[0].counterparty_seen is False
    assert states[1].country_seen and states[1].counterparty_seen
    assert not states[2].country_seen and states[2].known_countries == ("DE",)
    assert not states[2].counterparty_seen


def test_ip_fanout_counts_distinct_accounts_within_the_window(store):
    states = store.observe(RULES, [
        event("t1", "a1", 0, ip="198.51.100.1"), event("t2", "a2", 1, ip="198.51.100.1"),
        event("t3", "a1", 2, ip="198.51.100.1"), event("t4", "a3", 3, ip="198.51.100.1"),
        event("t5", "a4", 700, ip="198.51.100.1"), event("t6", "a5", 701, ip="203.0.113.9"),
    ])
    assert [s.fanout_counts[600_000] for s in states] == [1, 2, 2, 3, 1, 1]


def test_accounts_are_independent(store):
    store.observe(RULES, [event(f"x{i}", "busy", i, country="DE") for i in range(5)])
    quiet = store.observe(RULES, [event("q1", "quiet", 6, country="DE")])[0]
    assert quiet.prior_count == 0 and quiet.velocity_counts[60_000] == 0 and not quiet.country_seen


def test_redis_keys_expire(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"ttl-{uuid.uuid4().hex[:8]}:"
    RedisStateStore(client, key_prefix=prefix, dedupe_ttl_s=120).observe(
        RULES, [event("t1", "acc", country="DE", ip="10.0.0.1", counterparty_id="cp")])
    keys = [k.decode() for k in client.scan_iter(f"{prefix}*")]
    assert len(keys) == 4, keys
    ttls = {k.split(":")[1]: client.pttl(k) for k in keys}
    assert all(ttl > 0 for ttl in ttls.values()), f"every key has a TTL: {ttls}"
    # At least the TTL after the event, and at most an eighth (an hour at most) more.
    assert 60_000 - 5_000 < ttls["vel"] <= 67_500 and 600_000 - 5_000 < ttls["ip"] <= 675_000
    assert 115_000 < ttls["tx"] <= 120_000
    assert 30 * 86_400_000 - 5_000 < ttls["acct"] <= 30 * 86_400_000 + 3_600_000


def test_an_expiry_is_pushed_out_once_less_than_the_ttl_is_left(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"ttl-{uuid.uuid4().hex[:8]}:"
    store = RedisStateStore(client, key_prefix=prefix)
    store.observe(RULES, [event("t1", "acc", ip="10.0.0.1")])
    vel = f"{prefix}vel:acc"
    client.pexpire(vel, 66_000)  # still more than the 60 s window left: the next event leaves it
    store.observe(RULES, [event("t2", "acc", 1, ip="10.0.0.1")])
    assert 60_000 < client.pttl(vel) <= 66_000
    client.pexpire(vel, 59_000)  # less than the window left: pushed out to the window and an eighth
    store.observe(RULES, [event("t3", "acc", 2, ip="10.0.0.1")])
    assert 66_000 < client.pttl(vel) <= 67_500


def test_unreachable_redis_raises_state_unavailable():
    from .conftest import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.05, socket_timeout=0.05)
    with pytest.raises(StateUnavailable, match="Redis did not answer"):
        RedisStateStore(client).observe(RULES, [event("t1")])


def test_script_is_reloaded_after_a_redis_restart(redis_url):
    client = redis.Redis.from_url(redis_url)
    store = RedisStateStore(client, key_prefix=f"flush-{uuid.uuid4().hex[:8]}:")
    store.observe(RULES, [event("t1")])
    client.script_flush()  # what a restarted Redis looks like to the client: the script cache is empty
    assert store.observe(RULES, [event("t2", t_s=1)])[0].prior_count == 1


def test_same_id_same_content_is_a_redelivery_other_content_is_a_new_event(store):
    first = store.observe(RULES, [event("dup", t_s=0, amount=10)])[0]
    again = store.observe(RULES, [event("dup", t_s=0, amount=10)])[0]
    reused = store.observe(RULES, [event("dup", t_s=1, amount=99)])[0]
    assert not first.replayed and not first.id_reused
    assert again.replayed and replace(again, replayed=False) == first
    assert not reused.replayed and reused.id_reused
    assert reused.prior_count == 1  # judged against the state after the first, then recorded
    assert store.observe(RULES, [event("next", t_s=2)])[0].prior_count == 2


def test_an_id_stored_as_a_hash_by_an_earlier_version_is_still_answered(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"old-{uuid.uuid4().hex[:8]}:"
    store = RedisStateStore(client, key_prefix=prefix)
    first = store.observe(RULES, [event("old", amount=10)])[0]
    key = f"{prefix}tx:old"
    stored = client.get(key).decode()  # fingerprint, then the snapshot
    fp, snapshot = stored[:stored.index("[")], stored[stored.index("["):]
    client.delete(key)
    client.hset(key, fp, snapshot)  # how versions before this one kept every id
    assert store.observe(RULES, [event("old", amount=10)])[0] == replace(first, replayed=True)
    reused = store.observe(RULES, [event("old", t_s=1, amount=99)])[0]
    assert reused.id_reused and not reused.replayed and client.hlen(key) == 2


def test_an_id_with_many_contents_keeps_each_of_them_up_to_the_limit(store):
    contents = [event("many", t_s=i, amount=10 + i) for i in range(3)]
    judged = [store.observe(RULES, [e])[0] for e in contents]
    again = [store.observe(RULES, [e])[0] for e in contents]  # the string became a hash of all three
    assert [s.replayed for s in again] == [True] * 3
    assert [replace(s, replayed=False) for s in again] == judged


def test_reused_ids_count_for_velocity(store):
    states = store.observe(RULES, [event("same-id", t_s=i * 0.001, amount=10 + i) for i in range(12)])
    assert [s.velocity_counts[60_000] for s in states] == list(range(12))
    assert all(s.id_reused for s in states[1:])


def test_poisoned_account_state_is_repaired_and_fails_no_other_event(redis_url):
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    client.hset(f"{prefix}acct:poisoned", mapping={"n": "3", "mean": "inf", "m2": "nan"})
    store = RedisStateStore(client, key_prefix=prefix)
    states = store.observe(RULES, [event("p1", "poisoned", amount=50), event("ok1", "healthy", amount=5)])
    assert states[0].amount_count == 0 and states[0].amount_mean == 0.0  # unreadable statistics start again
    assert states[1].prior_count == 0
    assert float(client.hget(f"{prefix}acct:poisoned", "mean")) == 50.0


def test_a_failing_event_fails_alone(redis_url):
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}acct:wrongtype", "a string where a hash belongs")
    states = RedisStateStore(client, key_prefix=prefix).observe(
        RULES, [event("w1", "wrongtype"), event("h1", "healthy"), event("h2", "healthy", t_s=1)])
    assert isinstance(states[0], StateFailure) and "WRONGTYPE" in states[0].reason
    assert [s.prior_count for s in states[1:]] == [0, 1]
