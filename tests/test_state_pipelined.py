"""The engine sends the rule-state script before it scores a batch and reads the answer after
(`RedisStateStore.observe_later`): the same answers as `observe`, and a call that is dropped, refused or lost
leaves the connection pool usable and says so as `observe` would. `remember` does not wait for Redis either: its
answer is read by the next `remember` or `recall`."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import redis

from fraudmon.core.errors import StateUnavailable
from fraudmon.core.events import event_from_dict
from stream_app.aggregates import parse_aggregates
from stream_app.state import RedisStateStore

from .conftest import free_port

AGGS = parse_aggregates({
    "payments_60s": {"kind": "count", "by": "account_id", "window": "60s"},
    "accounts_on_ip": {"kind": "count_distinct", "by": "ip", "of": "account_id", "window": "10m"},
    "country_seen": {"kind": "seen", "by": "account_id", "of": "country", "ttl": "30d"},
    "payments": {"kind": "count", "by": "account_id", "ttl": "30d"},
})
COUNT = 3
T0 = 1_763_800_000_000


def event(tx: str, account: str = "a", t_s: float = 0.0, **fields):
    return event_from_dict({"transaction_id": tx, "account_id": account, "amount": 10.0,
                            "timestamp": int(T0 + t_s * 1000), "ip": "10.0.0.1", "country": "DE", **fields})


@pytest.fixture
def redis_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield server, url
    server.terminate()
    server.wait(timeout=10)


def store_on(url: str) -> RedisStateStore:
    store = RedisStateStore(redis.Redis.from_url(url, socket_timeout=2), key_prefix=f"t-{uuid.uuid4().hex[:6]}:")
    store.connect()
    return store


def test_answers_as_observe_does(redis_server):
    _, url = redis_server
    a, b = store_on(url), store_on(url)
    batches = [[event(f"tx{i}-{j}", account=f"acc{j % 3}", t_s=i * 10 + j, country="DE" if j % 4 else "FR")
                for j in range(8)] for i in range(4)]
    for batch in batches:
        assert b.observe_later(AGGS, batch).result() == a.observe(AGGS, batch)
    assert b.observe_later(AGGS, batches[0]).result() == a.observe(AGGS, batches[0])  # redeliveries


def test_no_aggregates_are_answered_without_redis(redis_server):
    _, url = redis_server
    store = store_on(url)
    pending = store.observe_later((), [event("x"), event("y")])
    assert pending.result() == [(), ()] and not store._in_flight
    pending.cancel()


def test_a_dropped_call_leaves_the_pool_usable(redis_server):
    _, url = redis_server
    store = store_on(url)
    store.observe_later(AGGS, [event("dropped")]).cancel()
    states = store.observe_later(AGGS, [event("next", t_s=1)]).result()
    assert states[0][COUNT] == 1 and store.client.ping()  # the dropped call ran; only its answer was dropped


def test_a_flushed_script_is_loaded_again(redis_server):
    _, url = redis_server
    store = store_on(url)
    store.client.script_flush()
    (state,) = store.observe_later(AGGS, [event("after-flush")]).result()
    assert state == (0, 0, False, 0)


def test_redis_gone_is_unavailable(redis_server):
    server, url = redis_server
    store = store_on(url)
    pending = store.observe_later(AGGS, [event("lost")])
    pending.result()
    server.terminate()
    server.wait(timeout=10)
    with pytest.raises(StateUnavailable):
        store.observe_later(AGGS, [event("gone", t_s=2)]).result()


def test_remembered_decisions_are_recalled_and_their_answer_read_later(redis_server):
    """`remember` does not wait for Redis: its answer is read by the next `remember` or `recall`."""
    _, url = redis_server
    store = store_on(url)
    store.remember([("tx1", "flag"), ("tx2", "pass")])
    assert store._unsettled is not None
    assert (store.recall("tx1"), store.recall("tx2"), store.recall("tx3")) == ("flag", "pass", None)
    assert store._unsettled is None
    for i in range(3):
        store.remember([(f"b{i}", "pass")])
    other = RedisStateStore(redis.Redis.from_url(url), key_prefix=store.key_prefix)  # another worker
    assert other.recall("b0") == "pass" and store.recall("b2") == "pass"
    assert len(store.client.connection_pool._in_use_connections) == 0


def test_a_refused_remember_is_logged_and_the_next_one_kept(redis_server, caplog):
    _, url = redis_server
    store = store_on(url)
    key = f"{store.key_prefix}dec:{int(time.time()) // 3600}"
    store.client.set(key, "not a hash")
    store.remember([("tx1", "flag")])
    store.client.delete(key)
    store.remember([("tx2", "pass")])
    assert "decisions not kept for verdicts: ResponseError" in caplog.text
    assert (store.recall("tx1"), store.recall("tx2")) == (None, "pass") and store.client.ping()


def test_remember_with_redis_gone_is_unavailable(redis_server):
    server, url = redis_server
    store = store_on(url)
    server.terminate()
    server.wait(timeout=10)
    with pytest.raises(StateUnavailable, match="did not keep the decisions"):
        store.remember([("tx1", "flag")])
    assert len(store.client.connection_pool._in_use_connections) == 0


def test_calls_in_flight_share_one_connection_and_are_answered_in_order(redis_server):
    """A batch's script may be sent before the one before it is answered: Redis runs them in the order sent."""
    _, url = redis_server
    store, reference = store_on(url), store_on(url)
    batches = [[event(f"o{i}-{j}", account=f"acc{j % 2}", t_s=i * 4 + j) for j in range(4)] for i in range(3)]
    pending = [store.observe_later(AGGS, batch) for batch in batches]
    assert len({p._connection for p in pending}) == 1
    answers = [p.result() for p in reversed(pending)][::-1]  # a later answer read first keeps the earlier ones
    assert answers == [reference.observe(AGGS, batch) for batch in batches]
    assert [s[COUNT] for s in answers[2]] == [4, 4, 5, 5]
    assert len(store.client.connection_pool._in_use_connections) == 0


def test_a_dropped_call_keeps_the_ones_sent_after_it(redis_server):
    _, url = redis_server
    store = store_on(url)
    dropped, kept = store.observe_later(AGGS, [event("d")]), store.observe_later(AGGS, [event("k", t_s=1)])
    dropped.cancel()
    assert kept.result()[0][COUNT] == 1 and store.client.ping()
    assert len(store.client.connection_pool._in_use_connections) == 0


def test_an_unanswered_call_fails_the_ones_sent_after_it(redis_server):
    _, url = redis_server
    store = RedisStateStore(redis.Redis.from_url(url, socket_timeout=0.2), key_prefix="t-pause:")
    store.connect()
    store.client.execute_command("CLIENT", "PAUSE", 1000, "ALL")
    first, second = store.observe_later(AGGS, [event("first")]), store.observe_later(AGGS, [event("second")])
    for pending in (first, second):
        with pytest.raises(StateUnavailable):
            pending.result()
    assert len(store.client.connection_pool._in_use_connections) == 0
