"""The engine's failure paths, with a state store and a model that fail on purpose (unit tests, no services):
every message still ends as one decision or one dead letter, and degraded decisions say why."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest

from fraudmon.core.errors import StateUnavailable
from fraudmon.core.logs import OutageLogFilter
from stream_app import engine as engine_module
from stream_app.engine import DecisionEngine, RawMessage
from stream_app.metrics import WorkerMetrics
from stream_app.publish import OutputRecord, Publisher
from stream_app.rules import load_rules
from stream_app.scoring import load_model
from stream_app.state import InMemoryStateStore, StateFailure
from tests.conftest import PROJECT_ROOT

MODEL = load_model(PROJECT_ROOT / "models" / "default.onnx")
RULES = load_rules(PROJECT_ROOT / "config" / "rules.yaml")


def message(i: int, account: str = "acc", **changes) -> RawMessage:
    event = {"transaction_id": f"tx-{i}", "account_id": account, "amount": 20.0 + i,
             "timestamp": int(time.time() * 1000) - 60_000 + i, "country": "DE", **changes}
    return RawMessage(orjson.dumps(event), account.encode(), "transactions", 0, i)


class FlakyStore(InMemoryStateStore):
    """The in-process store, unavailable while `down`, failing the events of `broken_account`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.broken_account: str | None = None

    def observe(self, aggregates, events):
        if self.down:
            raise StateUnavailable("connection refused")
        states = super().observe(aggregates, events)
        return [StateFailure("WRONGTYPE") if e.account_id == self.broken_account else s
                for e, s in zip(events, states, strict=True)]


def engine_with(store, **kwargs) -> DecisionEngine:
    return DecisionEngine(MODEL, RULES, store, retry_after_s=0.0, **kwargs)


def test_redis_down_degrades_then_the_backlog_is_recorded():
    store = FlakyStore()
    engine = engine_with(store)
    store.down = True
    during = engine.process([message(i) for i in range(5)]).decisions
    assert all(d["degraded"] and "skipped:redis_unavailable" in d["reasons"] for d in during)
    assert engine.state_backlog == 5
    store.down = False
    after = engine.process([message(5)]).decisions[0]
    assert not after["degraded"] and engine.state_backlog == 0
    history = [a.name for a in RULES.aggregates].index("account_payments")
    assert store.observe(RULES.aggregates, [engine_module.parse_event(message(6).value)])[0][history] == 6, \
        "the five events decided during the outage count in the account's history"


class Clock:
    """`time` for the engine, with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_a_store_that_is_down_is_tried_again_after_retry_after_s(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(engine_module, "time", clock)
    store = FlakyStore()
    tried = []
    real_observe = store.observe
    store.observe = lambda aggregates, events: (tried.append(clock.now), real_observe(aggregates, events))[1]
    engine = DecisionEngine(MODEL, RULES, store, latency_budget_ms=50, retry_after_s=0.3)
    store.down = True
    for step in range(100):  # a batch every 10 ms for a second
        clock.now = 1000.0 + step * 0.01
        engine.process([message(step)])
    waits = [b - a for a, b in zip(tried, tried[1:], strict=False)]
    assert len(waits) == 3 and all(0.3 - 1e-9 <= w < 0.311 for w in waits), waits
    store.down = False
    clock.now += 0.3
    assert not engine.process([message(100)]).decisions[0]["degraded"]
    for step in range(10):
        engine.process([message(101 + step)])
    assert engine.state_backlog == 0, "the events decided meanwhile are recorded once the store answers"


class SlowStore(InMemoryStateStore):
    """The in-process store answering `observe` only after `delay_s` (a busy Redis)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def observe(self, aggregates, events):
        time.sleep(self.delay_s)
        return super().observe(aggregates, events)


def test_a_busy_store_is_waited_for_and_counts_against_the_budget():
    """Late is not missing: a store that answers after the latency budget gives complete decisions, counted as
    over the budget (`fraud_latency_budget_exceeded_total`), never degraded."""
    metrics = WorkerMetrics()
    engine = DecisionEngine(MODEL, RULES, SlowStore(0.08), metrics=metrics, latency_budget_ms=20)
    decisions = engine.process([message(i) for i in range(3)]).decisions
    assert [d["degraded"] for d in decisions] == [False] * 3
    assert all(d["latency_ms"] >= 80 for d in decisions)
    assert metrics.registry.get_sample_value("fraud_latency_budget_exceeded_total") == 3
    assert metrics.registry.get_sample_value("fraud_degraded_total", {"cause": "redis_unavailable"}) == 0


def test_backlog_overflow_is_counted():
    store = FlakyStore()
    store.down = True
    metrics = WorkerMetrics()
    engine = engine_with(store, metrics=metrics, max_state_backlog=3)
    engine.process([message(i) for i in range(5)])
    assert engine.state_backlog == 3
    assert metrics.registry.get_sample_value("fraud_state_unrecorded_events_total") == 2


def test_one_broken_account_degrades_only_its_own_events():
    store = FlakyStore()
    store.broken_account = "poisoned"
    metrics = WorkerMetrics()
    decisions = engine_with(store, metrics=metrics).process(
        [message(0, "healthy"), message(1, "poisoned"), message(2, "healthy")]).decisions
    assert [d["degraded"] for d in decisions] == [False, True, False]
    assert decisions[1]["reasons"][-1] == "skipped:state_error"
    assert metrics.registry.get_sample_value("fraud_degraded_total", {"cause": "state_error"}) == 1
    assert metrics.registry.get_sample_value("fraud_degraded_total", {"cause": "redis_unavailable"}) == 0


def test_a_failing_model_degrades_with_model_error(monkeypatch):
    engine = engine_with(InMemoryStateStore())
    monkeypatch.setattr(MODEL, "predict", lambda x: (_ for _ in ()).throw(RuntimeError("onnxruntime says no")))
    decisions = engine.process([message(0), message(1)]).decisions
    assert all(d["model"] is None and d["degraded"] and "skipped:model_error" in d["reasons"] for d in decisions)


def test_events_without_the_models_features_skip_only_the_model(monkeypatch):
    engine = engine_with(InMemoryStateStore())
    monkeypatch.setattr(engine_module, "passthrough_features", lambda model: ["V1"])  # as a V1..V28 model needs
    with_features = message(0, features={"V1": 1.0})
    decisions = engine.process([with_features, message(1)]).decisions
    assert ["skipped:model_error" in d["reasons"] for d in decisions] == [False, True]


def test_a_bug_on_one_record_dead_letters_that_record_only(monkeypatch):
    real = engine_module.judge

    def judge(rules, event, *args):
        if event.transaction_id == "tx-3":
            raise ZeroDivisionError("bug")
        return real(rules, event, *args)

    monkeypatch.setattr(engine_module, "judge", judge)
    metrics = WorkerMetrics()
    outcome = engine_with(InMemoryStateStore(), metrics=metrics).process([message(i) for i in range(8)])
    assert sorted(d["transaction_id"] for d in outcome.decisions) == [f"tx-{i}" for i in range(8) if i != 3]
    (key, letter), = outcome.dead_letters
    assert letter["offset"] == 3 and letter["error"].startswith("internal: ZeroDivisionError: bug")
    assert metrics.registry.get_sample_value("fraud_input_messages_total") == 8
    assert metrics.registry.get_sample_value("fraud_events_total", {"outcome": "scored"}) == 7


def test_dead_letters_are_bounded():
    huge = bytes(range(256)) * 4000
    outcome = engine_with(InMemoryStateStore()).process([RawMessage(huge, b"k", "transactions", 1, 9)])
    (_, letter), = outcome.dead_letters
    assert letter["raw_encoding"] == "base64" and letter["raw_truncated"] and letter["raw_bytes"] == len(huge)
    assert len(orjson.dumps(letter)) < 20_000


def test_publisher_sends_failed_records_again_until_acknowledged():
    attempts: list[bytes] = []

    async def send(topic, key, value, partition, timestamp, headers):
        attempts.append(value)
        future = asyncio.get_running_loop().create_future()
        if value == b"flaky" and attempts.count(b"flaky") < 3:
            future.set_exception(ConnectionError("broker down"))
        else:
            future.set_result(None)
        return future

    metrics = WorkerMetrics()
    records = [OutputRecord("t", b"k", b"ok"), OutputRecord("t", b"k", b"flaky")]
    asyncio.run(Publisher(send, metrics, first_retry_s=0.001).publish(records))
    assert attempts == [b"ok", b"flaky", b"flaky", b"flaky"]
    assert metrics.registry.get_sample_value("fraud_publish_retries_total") == 2


@pytest.mark.parametrize("logger", ["aiokafka.conn", "stream_app.engine"])
def test_outage_logs_are_rate_limited_per_dependency(logger):
    limit = OutageLogFilter(window_s=10)

    def record(created: float) -> logging.LogRecord:
        entry = logging.LogRecord(logger, logging.WARNING, __file__, 1, "cannot connect", None, None)
        entry.created = created
        if logger.startswith("stream_app"):
            entry.dependency = "redis"
        return entry

    records = [record(t) for t in (0.0, 1.0, 2.0, 9.9, 10.5, 30.0)]
    assert [limit.filter(r) for r in records] == [True, False, False, False, True, True]
    assert "[3 more" in records[4].msg and "more" not in records[5].msg


def test_a_batch_started_before_the_one_before_is_finished_is_decided_the_same():
    """The worker starts micro-batch k+1 (its script sent) before it finishes k: the same decisions, in order."""
    batches = [[message(i, account=f"acc{i % 3}") for i in range(k * 4, k * 4 + 4)] for k in range(3)]
    sequential = engine_with(InMemoryStateStore())
    expected = [sequential.process(batch).decisions for batch in batches]
    engine = engine_with(InMemoryStateStore())
    upcoming, got = engine.start(batches[0]), []
    for batch in [*batches[1:], None]:
        current, upcoming = upcoming, batch and engine.start(batch)
        got.append(engine.finish(current).decisions)

    def timeless(decisions):
        return [{k: v for k, v in d.items() if k not in ("decided_at", "latency_ms")} for d in decisions]

    assert [timeless(ds) for ds in got] == [timeless(ds) for ds in expected]


def test_a_bug_while_starting_a_batch_dead_letters_that_record_only(monkeypatch):
    real = engine_module.parse_event

    def parse_event(value, *args):
        if b'"tx-2"' in value:
            raise KeyError("bug")
        return real(value, *args)

    monkeypatch.setattr(engine_module, "parse_event", parse_event)
    engine = engine_with(InMemoryStateStore())
    outcome = engine.finish(engine.start([message(i) for i in range(4)]))
    assert sorted(d["transaction_id"] for d in outcome.decisions) == ["tx-0", "tx-1", "tx-3"]
    (_, letter), = outcome.dead_letters
    assert letter["offset"] == 2 and letter["error"].startswith("internal: KeyError")


def _simulated_messages(n: int) -> list[RawMessage]:
    from datetime import UTC, datetime, timedelta

    from fraudmon.core.events import event_to_dict
    from training.simulate import SimulationConfig, simulate

    events, _ = simulate(SimulationConfig(n_events=n, n_accounts=100, start=datetime.now(UTC) - timedelta(hours=2),
                                          duration=timedelta(hours=1), seed=3))
    return [RawMessage(orjson.dumps(event_to_dict(e)), e.account_id.encode(), "transactions", 0, i)
            for i, e in enumerate(events)]


def test_a_shadow_that_does_not_fit_the_traffic_is_dropped_saying_why(caplog):
    """Events without a channel or an account age, which every training row had: the shadow's scores mean
    nothing, so after RECENT_EVENTS events it is no longer scored, and the log and the metrics say so."""
    engine = engine_with(InMemoryStateStore(), shadow=MODEL)
    engine.process([message(i) for i in range(150)])
    assert engine.shadow is MODEL, "too few events to judge"
    with caplog.at_level(logging.ERROR, logger="stream_app.engine"):
        decisions = engine.process([message(i) for i in range(150, 300)]).decisions
    assert engine.shadow is None
    assert any("shadow model default" in r.getMessage() and "channel in 200 of 200" in r.getMessage()
               for r in caplog.records)
    assert engine.metrics.reloads.labels(artifact="shadow", result="refused")._value.get() == 1
    assert "shadow" in decisions[0]  # the batch that judged it was still scored
    assert all("shadow" not in d for d in engine.process([message(300)]).decisions)


def test_a_shadow_that_fits_the_traffic_is_kept():
    engine = engine_with(InMemoryStateStore(), shadow=MODEL)
    messages = _simulated_messages(400)
    engine.process(messages[:250])
    decisions = engine.process(messages[250:]).decisions
    assert engine.shadow is MODEL
    assert all(d["shadow"]["version"] == MODEL.version for d in decisions)


def test_a_failing_shadow_check_never_fails_the_batch(monkeypatch):
    engine = engine_with(InMemoryStateStore(), shadow=MODEL)
    monkeypatch.setattr(engine_module, "events_problem", lambda model, events: 1 / 0)
    outcome = engine.process([message(i) for i in range(250)])
    assert len(outcome.decisions) == 250 and not outcome.dead_letters
    assert engine.shadow is MODEL
