"""Declared aggregates: parsing and refusals, and every kind kept by both stores (Redis, a real redis-server, and the
in-process one): values before the event, windows, TTLs, events lacking `by` or `of`, redelivery, reused ids,
corrupt keys, and the two stores agreeing on simulated traffic."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
import redis

from fraudmon.core.errors import RulesError
from fraudmon.core.events import event_from_dict
from stream_app.aggregates import KINDS, Aggregate, Duration, aggregate_type, parse_aggregates, parse_duration_ms
from stream_app.state import InMemoryStateStore, RedisStateStore, StateFailure
from training.simulate import SimulationConfig, simulate

T0 = 1_763_800_000_000
ALL = parse_aggregates({
    "cnt_w": {"kind": "count", "by": "account_id", "window": "60s"},
    "cnt_t": {"kind": "count", "by": "account_id", "ttl": "1d"},
    "sum_w": {"kind": "sum", "by": "account_id", "of": "amount", "window": "60s"},
    "sum_t": {"kind": "sum", "by": "account_id", "of": "amount", "ttl": "1d"},
    "mean_w": {"kind": "mean", "by": "account_id", "of": "amount", "window": "60s"},
    "mean_t": {"kind": "mean", "by": "account_id", "of": "amount", "ttl": "1d"},
    "std_w": {"kind": "std", "by": "account_id", "of": "amount", "window": "60s"},
    "std_t": {"kind": "std", "by": "account_id", "of": "amount", "ttl": "1d"},
    "dist_w": {"kind": "count_distinct", "by": "ip", "of": "account_id", "window": "60s"},
    "dist_t": {"kind": "count_distinct", "by": "account_id", "of": "country", "ttl": "1d"},
    "seen_w": {"kind": "seen", "by": "ip", "of": "account_id", "window": "60s"},
    "seen_t": {"kind": "seen", "by": "account_id", "of": "country", "ttl": "1d"},
    "first_w": {"kind": "first_seen_age", "by": "account_id", "window": "60s"},
    "first_t": {"kind": "first_seen_age", "by": "account_id", "ttl": "1d"},
    "since_w": {"kind": "since_last", "by": "account_id", "window": "60s"},
    "since_t": {"kind": "since_last", "by": "account_id", "ttl": "1d"},
    "tx_count": {"kind": "count", "by": "transaction_id", "ttl": "1h"},
})
NAMES = [a.name for a in ALL]
DEFAULTS = {"cnt_w": 0, "cnt_t": 0, "sum_w": 0.0, "sum_t": 0.0, "mean_w": 0.0, "mean_t": 0.0, "std_w": 0.0,
            "std_t": 0.0, "dist_w": 0, "dist_t": 0, "seen_w": False, "seen_t": False, "first_w": 0, "first_t": 0,
            "since_w": 60_000, "since_t": 86_400_000, "tx_count": 0}


def event(tx: str, account: str = "a", t_s: float = 0.0, amount: float = 10.0, **fields):
    return event_from_dict({"transaction_id": tx, "account_id": account, "amount": amount,
                            "timestamp": int(T0 + t_s * 1000), **fields})


def named(values, aggregates=ALL) -> dict:
    assert not isinstance(values, StateFailure), values
    return dict(zip([a.name for a in aggregates], values, strict=True))


@pytest.fixture(params=["redis", "memory"])
def store(request):
    if request.param == "memory":
        return InMemoryStateStore()
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    return RedisStateStore(client, key_prefix=f"agg-{uuid.uuid4().hex[:8]}:")


# --- parsing ------------------------------------------------------------------------------------------------------

def test_the_design_notes_declarations_parse_in_order():
    aggs = parse_aggregates({
        "payments_5m": {"kind": "count", "by": "account_id", "window": "5m"},
        "amount_std": {"kind": "std", "by": "account_id", "of": "amount", "ttl": "30d"},
        "accounts_on_ip_1h": {"kind": "count_distinct", "by": "ip", "of": "account_id", "window": "1h"},
    })
    assert aggs == (
        Aggregate("payments_5m", "count", "account_id", None, 300_000, None),
        Aggregate("amount_std", "std", "account_id", "amount", None, 30 * 86_400_000),
        Aggregate("accounts_on_ip_1h", "count_distinct", "ip", "account_id", 3_600_000, None),
    )
    assert parse_aggregates(None) == () and parse_aggregates({}) == ()


def test_types_and_defaults_of_every_kind():
    assert {kind: aggregate_type(kind) for kind in KINDS} == {
        "count": "int", "sum": "double", "mean": "double", "std": "double", "count_distinct": "int",
        "seen": "bool", "first_seen_age": "duration", "since_last": "duration"}
    assert {a.name: a.default for a in ALL} == DEFAULTS
    assert all(type(a.default) is type(DEFAULTS[a.name]) for a in ALL)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "count", "by": "account_id", "window": "5m", "colour": "red"}, "unknown key(s) colour"),
    ({"kind": "median", "by": "account_id", "window": "5m"}, "unknown kind 'median'"),
    ({"kind": "count", "by": "amount", "window": "5m"}, "by 'amount' must be one of"),
    ({"kind": "count", "window": "5m"}, "by None must be one of"),
    ({"kind": "count", "by": "account_id", "of": "ip", "window": "5m"}, "takes no `of`"),
    ({"kind": "mean", "by": "account_id", "window": "5m"}, "needs `of`, one of amount"),
    ({"kind": "sum", "by": "account_id", "of": "country", "window": "5m"}, "needs `of`, one of amount"),
    ({"kind": "seen", "by": "account_id", "of": "amount", "ttl": "1d"}, "needs `of`, one of account_id"),
    ({"kind": "seen", "by": "ip", "of": "ip", "ttl": "1d"}, "`of` must be another field"),
    ({"kind": "count", "by": "account_id", "window": "5m", "ttl": "1d"}, "exactly one of `window`"),
    ({"kind": "count", "by": "account_id"}, "exactly one of `window`"),
    ({"kind": "count", "by": "account_id", "window": "5 minutes"}, "is not a duration"),
    ({"kind": "count", "by": "account_id", "ttl": "0s"}, "ttl must be at least 1ms"),
    ("count by account", "must be a mapping"),
])
def test_refusals_name_the_aggregate_and_the_problem(spec, message):
    with pytest.raises(RulesError, match="aggregate velocity: ") as caught:
        parse_aggregates({"velocity": spec})
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["2fast", "pay-5m", "in", "true", ""])
def test_names_must_read_as_cel_fields(name):
    with pytest.raises(RulesError, match=f"aggregate {name}: the name"):
        parse_aggregates({name: {"kind": "count", "by": "account_id", "window": "5m"}})


def test_aggregates_must_be_a_mapping():
    with pytest.raises(RulesError, match="aggregates: must be a mapping"):
        parse_aggregates([{"kind": "count"}])


def test_durations():
    assert parse_duration_ms("1.5h", "x") == 5_400_000 and parse_duration_ms(" 500ms ", "x") == 500
    assert Duration("10m") == 600_000 and Duration("10m").text == "10m"
    with pytest.raises(RulesError, match=r"state.history_ttl: '3 days' is not a duration"):
        parse_duration_ms("3 days", "state.history_ttl")
    with pytest.raises(ValueError, match="not a duration"):
        Duration("soon")


# --- every kind, both stores --------------------------------------------------------------------------------------

def test_every_kind_reads_the_state_before_the_event(store):
    states = [named(s) for s in store.observe(ALL, [
        event("e1", "a", 0, 10, ip="10.0.0.1", country="DE"),
        event("e2", "a", 10, 20, ip="10.0.0.1", country="FR"),
        event("e3", "b", 30, 30, ip="10.0.0.1", country="DE"),
        event("e4", "a", 100, 40, ip="10.0.0.1", country="DE"),
    ])]
    assert states[0] == DEFAULTS
    assert states[1] == {**DEFAULTS, "cnt_w": 1, "cnt_t": 1, "sum_w": 10.0, "sum_t": 10.0, "mean_w": 10.0,
                         "mean_t": 10.0, "dist_w": 1, "dist_t": 1, "seen_w": True, "first_w": 10_000,
                         "first_t": 10_000, "since_w": 10_000, "since_t": 10_000}
    assert states[2] == {**DEFAULTS, "dist_w": 1}  # b: no history; the IP saw a within the minute
    assert states[3] == {**DEFAULTS, "cnt_t": 2, "sum_t": 30.0, "mean_t": 15.0, "std_t": 5.0, "dist_t": 2,
                         "seen_t": True, "first_t": 100_000, "since_t": 90_000}  # the minute's window is empty


def test_windowed_statistics_over_the_window_only(store):
    store.observe(ALL, [event(f"w{i}", "a", i * 20, amount) for i, amount in enumerate([100, 1, 2, 3])])
    state = named(store.observe(ALL, [event("probe", "a", 70, 5)])[0])  # window (10 s, 70 s]: 1, 2, 3
    assert (state["cnt_w"], state["sum_w"], state["mean_w"]) == (3, 6.0, 2.0)
    assert state["std_w"] == pytest.approx((2 / 3) ** 0.5, abs=1e-15)
    assert (state["first_w"], state["since_w"]) == (50_000, 10_000)
    assert (state["cnt_t"], state["sum_t"]) == (4, 106.0) and state["mean_t"] == pytest.approx(26.5, abs=1e-12)


def test_values_are_plain_python_types(store):
    store.observe(ALL, [event("p1", "a", 0, 10, ip="10.0.0.1", country="DE")])
    (values,) = store.observe(ALL, [event("p2", "a", 1, 10, ip="10.0.0.1", country="DE")])
    assert isinstance(values, tuple)
    assert [type(v) for v in values] == [type(DEFAULTS[name]) for name in NAMES]


def test_events_lacking_by_or_of_read_the_defaults_and_are_not_recorded(store):
    states = [named(s) for s in store.observe(ALL, [
        event("n1", "a", 0, ip="10.0.0.1", country="DE"),
        event("n2", "b", 1),  # no ip, no country
        event("n3", "a", 2),
        event("n4", "c", 3, ip="10.0.0.1", country="DE"),
        event("n5", "a", 4, country="DE"),
    ])]
    assert (states[1]["dist_w"], states[1]["seen_w"], states[1]["seen_t"], states[1]["dist_t"]) == (0, False, False, 0)
    assert (states[2]["seen_t"], states[2]["dist_t"], states[2]["cnt_t"]) == (False, 0, 1)
    assert states[3]["dist_w"] == 1 and not states[3]["seen_w"]  # b brought no ip: only a was on it
    assert states[4]["dist_t"] == 1 and states[4]["seen_t"] and states[4]["cnt_t"] == 2


def test_windows_slide_by_event_time(store):
    aggs = parse_aggregates({"n": {"kind": "count", "by": "account_id", "window": "60s"},
                             "ips": {"kind": "count_distinct", "by": "ip", "of": "account_id", "window": "60s"},
                             "seen": {"kind": "seen", "by": "ip", "of": "account_id", "window": "60s"}})
    store.observe(aggs, [event(f"s{i}", f"acc{i % 3}", i * 8, ip="10.0.0.9") for i in range(10)])
    # acc0 paid at 0, 24, 48 and 72 s; the last times on the IP: acc0 72, acc1 56, acc2 64
    assert store.observe(aggs, [event("in", "acc0", 73, ip="10.0.0.9")])[0] == (3, 3, True)
    assert store.observe(aggs, [event("out", "acc0", 200, ip="10.0.0.9")])[0] == (0, 0, False)


def test_in_process_history_expires_ttl_after_the_entitys_last_event():
    store, day = InMemoryStateStore(), 86_400
    store.observe(ALL, [event("h1", "a", 0, country="DE"), event("h2", "a", day * 0.9, country="DE")])
    kept = named(store.observe(ALL, [event("h3", "a", day * 1.8, country="DE")])[0])
    assert kept["cnt_t"] == 2 and kept["seen_t"] and kept["first_t"] == int(day * 1.8 * 1000)
    gone = named(store.observe(ALL, [event("h4", "a", day * 3, country="DE")])[0])
    assert gone == DEFAULTS


def test_redis_keys_carry_the_entity_as_a_hash_tag_and_expire(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"ttl-{uuid.uuid4().hex[:8]}:"
    RedisStateStore(client, key_prefix=prefix, dedupe_ttl_s=120).observe(
        ALL, [event("t1", "acc", country="DE", ip="10.0.0.1")])
    ttls = {k.decode().removeprefix(prefix): client.pttl(k) for k in client.scan_iter(f"{prefix}*")}
    assert set(ttls) == {"{account_id:acc}:h86400000", "{account_id:acc}:e", "{ip:10.0.0.1}:d:a",
                         "{transaction_id:t1}:dd"}
    # At least the TTL after the event, and at most an eighth (an hour at most) more.
    assert 86_400_000 - 5_000 < ttls["{account_id:acc}:h86400000"] <= 86_400_000 + 3_600_000
    assert 60_000 - 5_000 < ttls["{account_id:acc}:e"] <= 67_500
    assert 60_000 - 5_000 < ttls["{ip:10.0.0.1}:d:a"] <= 67_500
    assert 3_600_000 - 5_000 < ttls["{transaction_id:t1}:dd"] <= 3_600_000, "the longer of dedupe and tx_count"


def test_an_expiry_is_pushed_out_once_less_than_the_ttl_is_left(redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"ttl-{uuid.uuid4().hex[:8]}:"
    store = RedisStateStore(client, key_prefix=prefix)
    store.observe(ALL, [event("x1", "acc")])
    stream = f"{prefix}{{account_id:acc}}:e"
    client.pexpire(stream, 66_000)  # still more than the 60 s window left: the next event leaves it
    store.observe(ALL, [event("x2", "acc", 1)])
    assert 60_000 < client.pttl(stream) <= 66_000
    client.pexpire(stream, 59_000)  # less than the window left: pushed out to the window and an eighth
    store.observe(ALL, [event("x3", "acc", 2)])
    assert 66_000 < client.pttl(stream) <= 67_500


def test_a_redis_key_prefix_with_braces_is_refused():
    with pytest.raises(ValueError, match="must not contain braces"):
        RedisStateStore(redis.Redis(), key_prefix="fm:{x}:")


# --- idempotence --------------------------------------------------------------------------------------------------

def test_redelivery_gets_the_same_values_and_is_counted_once_for_every_kind(store):
    batch = [event("r1", "a", 0, 10, ip="10.0.0.1", country="DE"),
             event("r2", "a", 10, 20, ip="10.0.0.1", country="FR"),
             event("r3", "b", 30, 30, ip="10.0.0.1", country="DE")]
    first = store.observe(ALL, batch)
    assert store.observe(ALL, batch) == first
    assert store.observe(ALL, batch[1:2] + batch[:1]) == first[1:2] + first[:1]
    probe = named(store.observe(ALL, [event("r4", "a", 40, 30, ip="10.0.0.1", country="BR")])[0])
    assert probe == {**DEFAULTS, "cnt_w": 2, "cnt_t": 2, "sum_w": 30.0, "sum_t": 30.0, "mean_w": 15.0,
                     "mean_t": 15.0, "std_w": 5.0, "std_t": 5.0, "dist_w": 2, "dist_t": 2, "seen_w": True,
                     "first_w": 40_000, "first_t": 40_000, "since_w": 30_000, "since_t": 30_000}


def test_the_same_id_with_other_content_is_a_new_event(store):
    first = named(store.observe(ALL, [event("dup", "a", 0, 10)])[0])
    again = named(store.observe(ALL, [event("dup", "a", 0, 10)])[0])
    reused = named(store.observe(ALL, [event("dup", "a", 1, 99)])[0])
    assert first == again == DEFAULTS
    assert reused["tx_count"] == 1 and reused["cnt_t"] == 1 and reused["sum_t"] == 10.0
    assert named(store.observe(ALL, [event("dup", "a", 0, 10)])[0]) == first  # still the first's values
    assert named(store.observe(ALL, [event("dup", "a", 2, 7)])[0])["tx_count"] == 2
    assert named(store.observe(ALL, [event("next", "a", 3)])[0])["cnt_t"] == 3


def test_an_id_with_many_contents_keeps_each_of_them_up_to_the_limit(store):
    contents = [event("many", t_s=i, amount=10 + i) for i in range(18)]
    judged = [store.observe(ALL, [e])[0] for e in contents]
    assert [named(s)["tx_count"] for s in judged] == list(range(17)) + [16], "counted up to 16 contents"
    again = [store.observe(ALL, [e])[0] for e in contents[:16]]
    assert again == judged[:16]
    assert named(store.observe(ALL, [event("after", t_s=30)])[0])["cnt_t"] == 18


def test_reused_ids_count_in_windows(store):
    states = store.observe(ALL, [event("same-id", t_s=i * 0.001, amount=10 + i) for i in range(12)])
    assert [named(s)["cnt_w"] for s in states] == list(range(12))


def test_a_redelivery_after_the_declarations_changed_reads_the_state_now_and_is_not_recorded(store):
    other = parse_aggregates({"n": {"kind": "count", "by": "account_id", "ttl": "1d"},
                              "tx": {"kind": "count", "by": "transaction_id", "ttl": "1h"}})
    store.observe(ALL, [event("c1", "a", 0), event("c2", "a", 1)])
    assert store.observe(other, [event("c1", "a", 0)]) == [(2, 0)]  # now, not when it was judged
    assert store.observe(other, [event("c3", "a", 2)]) == [(2, 0)]


def test_an_aggregate_declared_later_starts_from_the_events_after_it(store):
    """A mean declared after the count it shares its hash with starts from nothing (not from the count); a
    count_distinct declared after a seen of its field counts the values that seen marked."""
    before = {"n": {"kind": "count", "by": "account_id", "ttl": "1d"},
              "seen": {"kind": "seen", "by": "account_id", "of": "country", "ttl": "1d"}}
    after = parse_aggregates({**before, "mean": {"kind": "mean", "by": "account_id", "of": "amount", "ttl": "1d"},
                              "std": {"kind": "std", "by": "account_id", "of": "amount", "ttl": "1d"},
                              "countries": {"kind": "count_distinct", "by": "account_id", "of": "country",
                                            "ttl": "1d"}})
    store.observe(parse_aggregates(before), [event("l1", "a", 0, 100, country="DE"),
                                             event("l2", "a", 1, 200, country="FR")])
    states = store.observe(after, [event("l3", "a", 2, 10, country="DE"), event("l4", "a", 3, 20, country="IT"),
                                   event("l5", "a", 4, 30, country="IT")])
    assert states == [(2, True, 0.0, 0.0, 2), (3, False, 10.0, 0.0, 2), (4, True, 15.0, 5.0, 3)]


def test_no_aggregates_no_state(store):
    assert store.observe((), [event("z1"), event("z2")]) == [(), ()]


# --- failures -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, kind", [
    ("{account_id:bad}:h86400000", "string"),
    ("{account_id:bad}:e", "hash"),
    ("{ip:10.6.6.6}:d:a", "string"),
    ("{transaction_id:b1}:dd", "list"),
])
def test_a_corrupt_key_fails_its_event_alone_and_nothing_of_it_is_recorded(redis_url, key, kind):
    prefix = f"bad-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    {"string": lambda k: client.set(k, "x"), "hash": lambda k: client.hset(k, "x", "1"),
     "list": lambda k: client.rpush(k, "x")}[kind](prefix + key)
    store = RedisStateStore(client, key_prefix=prefix)
    states = store.observe(ALL, [event("ok1", "good", 0, ip="10.0.0.1"), event("b1", "bad", 1, ip="10.6.6.6"),
                                 event("ok2", "good", 2, ip="10.0.0.1")])
    assert isinstance(states[1], StateFailure) and "WRONGTYPE" in states[1].reason
    assert named(states[2])["cnt_t"] == 1 and named(states[0]) == DEFAULTS
    client.delete(prefix + key)
    probe = named(store.observe(ALL, [event("probe", "bad", 3, ip="10.6.6.6")])[0])
    assert (probe["cnt_t"], probe["cnt_w"], probe["dist_w"]) == (0, 0, 0), "the failed event was not recorded"


def test_poisoned_statistics_start_again_and_fail_no_event(redis_url):
    prefix = f"poison-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    key = f"{prefix}{{account_id:poisoned}}:h86400000"
    client.hset(key, mapping={"n": "3", "m": "inf", "q": "nan", "s": "not a number"})
    store = RedisStateStore(client, key_prefix=prefix)
    state = named(store.observe(ALL, [event("p1", "poisoned", amount=50)])[0])
    assert (state["cnt_t"], state["mean_t"], state["std_t"], state["sum_t"]) == (0, 0.0, 0.0, 0.0)
    assert float(client.hget(key, "m")) == 50.0 and float(client.hget(key, "s")) == 50.0


# --- the two stores agree -----------------------------------------------------------------------------------------

def test_redis_and_in_process_stores_agree_on_simulated_traffic(redis_url):
    """Every kind, on a few thousand simulated events with redeliveries and reused ids mixed in."""
    aggs = ALL + parse_aggregates({
        "devices": {"kind": "count_distinct", "by": "account_id", "of": "device_id", "ttl": "30d"},
        "cp_seen": {"kind": "seen", "by": "account_id", "of": "counterparty_id", "ttl": "30d"},
        "mcc_amount_1h": {"kind": "sum", "by": "merchant_category", "of": "amount", "window": "1h"},
        "device_std_6h": {"kind": "std", "by": "device_id", "of": "amount", "window": "6h"},
        "device_age": {"kind": "first_seen_age", "by": "device_id", "ttl": "30d"},
        "merchant_quiet": {"kind": "since_last", "by": "merchant_id", "window": "2h"},
        "accounts_per_device": {"kind": "count_distinct", "by": "device_id", "of": "account_id", "window": "1d"},
        "country_on_ip": {"kind": "seen", "by": "ip", "of": "country", "window": "30m"},
    })
    events, _ = simulate(SimulationConfig(n_events=4000, n_accounts=60, duration=timedelta(hours=12), seed=7))
    rng = random.Random(7)
    stream = []
    for i, e in enumerate(events):
        stream.append(e)
        if i and rng.random() < 0.03:
            stream.append(events[rng.randrange(i)])  # a redelivery
        if i and rng.random() < 0.01:
            stream.append(replace(e, amount=e.amount + 1))  # the same id, other content
    client = redis.Redis.from_url(redis_url)
    remote = RedisStateStore(client, key_prefix=f"sim-{uuid.uuid4().hex[:8]}:")
    local = InMemoryStateStore()
    mismatches = []
    for start in range(0, len(stream), 97):
        batch = stream[start:start + 97]
        for e, a, b in zip(batch, remote.observe(aggs, batch), local.observe(aggs, batch), strict=True):
            if a != b or [type(x) for x in a] != [type(y) for y in b]:
                mismatches.append((e.transaction_id, a, b))
    assert not mismatches, mismatches[:3]
    assert any(named(v, aggs)["std_t"] > 0 for v in local.observe(aggs, events[-50:]))
