"""The Faust app: `faust -A stream_app.app worker -l info` (or `fraudmon worker`).

The agent is glue: it takes micro-batches from `transactions`, hands them to the `DecisionEngine`, and publishes
decisions to `transaction-scores` (all) and `flagged-transactions` (flags), and dead letters to the DLQ.
Configuration comes from `config/monitor.yaml` and `FRAUDMON_*` environment variables.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import ssl
import sys
import time

import faust
import orjson

from fraudmon.core.config import KafkaSettings, load_settings
from fraudmon.core.errors import FraudMonitorError, StateUnavailable
from fraudmon.core.logs import configure_logging, install_outage_filter, json_logging_config
from stream_app.engine import RawMessage
from stream_app.lists import ListFollower
from stream_app.publish import OutputRecord, Publisher, outcome_records
from stream_app.runtime import HotReloader, build_engine, check_ports, wait_for_kafka, wait_for_state_store
from stream_app.transport import App, BatchConsumer, ConsumerThread, transport_options
from stream_app.verdicts import count_verdicts

log = logging.getLogger("stream_app")


def _credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """Kafka security settings passed through to Faust (SASL and/or SSL)."""
    context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_cafile)
        if kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username, password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism or "PLAIN", ssl_context=context,
        )
    return faust.SSLCredentials(context) if context else None


try:
    settings = load_settings()
    configure_logging(settings.logging.level, settings.logging.json_logs)
    engine = build_engine(settings)
    check_ports(settings)
except FraudMonitorError as exc:
    print(f"fraud-monitor worker cannot start: {exc}", file=sys.stderr)
    sys.exit(2)

worker = settings.worker
topics = settings.topics
lists = ListFollower(settings)  # the named lists, followed from their compacted topic into memory
settings.resolve(worker.data_dir).mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
reloader = HotReloader(engine, settings.resolve(worker.model_path), settings.resolve(worker.rules_path),
                       settings.resolve(worker.shadow_model_path) if worker.shadow_model_path else None)

App.batch_fetch = worker.batch_fetch
ConsumerThread.fetch_max_wait_ms = worker.fetch_max_wait_ms
app = App(
    worker.app_id,
    broker=[f"kafka://{host.strip()}" for host in settings.kafka.bootstrap_servers.split(",")],
    broker_credentials=_credentials(settings.kafka),
    datadir=str(settings.resolve(worker.data_dir)),
    web_enabled=worker.web_port > 0,  # Faust's own web server (its /health-like pages); 0 disables it
    web_port=worker.web_port or 6066,
    logging_config=json_logging_config(settings.logging.level) if settings.logging.json_logs else None,
    topic_partitions=topics.partitions,
    topic_replication_factor=topics.replication_factor,
    broker_session_timeout=worker.session_timeout_s,
    broker_heartbeat_interval=worker.heartbeat_interval_s,
    **transport_options(worker.max_batch, worker.fetch_max_bytes),
)

transactions_topic = app.topic(topics.transactions, key_type=bytes, value_type=bytes)
verdicts_topic = app.topic(topics.verdicts, key_type=bytes, value_type=bytes)


@app.on_worker_init.connect
def _on_worker_init(app: faust.App, **_: object) -> None:
    """Wait for Kafka and Redis (up to `startup_timeout_s`) and serve /metrics. The `faust` command line
    prepares the app, and so sends this signal, more than once: only the first call does anything."""
    if engine.metrics.serving:
        return
    try:
        wait_for_kafka(settings.kafka.bootstrap_servers, give_up_s=worker.startup_timeout_s)
        wait_for_state_store(engine.store, give_up_s=worker.startup_timeout_s)
        lists.start().wait_loaded(worker.startup_timeout_s)  # no decision before the lists are read whole
        engine.lists = lists.current
        engine.warm_up()
        # What start-up built (Faust, onnxruntime, numpy, the settings) lives as long as the worker: out of the
        # collector's sight, a full collection no longer walks it (a pause and CPU per event otherwise).
        gc.collect()
        gc.freeze()
        # A batch allocates thousands of short-lived containers, nearly all freed by reference counting: a young
        # collection every 100,000 allocations instead of 700 (the default) finds as little garbage for less CPU.
        gc.set_threshold(100_000, 20, 10)
        engine.metrics.serve(worker.metrics_port, worker.metrics_address)
    except FraudMonitorError as exc:
        print(f"fraud-monitor worker cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    log.info(
        "serving model %s (%s)%s, %d rules, %d list entries, latency budget %.0f ms, metrics on :%d",
        engine.model.name, engine.model.version,
        f", shadow model {engine.shadow.name} ({engine.shadow.version})" if engine.shadow else "",
        len(engine.rules.rules), lists.store.size(), worker.latency_budget_ms, worker.metrics_port,
    )


async def _decide_and_publish(messages: list[RawMessage], publisher: Publisher) -> None:
    """Decide `messages` (micro-batches of at most `worker.max_batch`) and return once every outcome is
    acknowledged by the brokers; a bug here stops the worker before anything of the batch is committed. Each
    micro-batch's rule-state script is sent before the one before it is decided, so Redis runs it meanwhile."""
    observe, size = engine.metrics.end_to_end_seconds.observe, worker.max_batch
    try:
        upcoming = engine.start(messages[:size])
        for start in range(size, len(messages) + size, size):
            current, upcoming = upcoming, engine.start(messages[start:start + size]) if start < len(messages) else None
            outcome = engine.finish(current)
            await publisher.publish(outcome_records(outcome, topics))
            published_s = time.time()
            for event in outcome.events:
                observe(max(0.0, published_s - event.timestamp_ms / 1000.0))
    except Exception:  # a bug outside the engine: the batch must not be acked unpublished, so stop first
        log.critical("cannot publish the outcome of %d records; stopping without committing them (they are "
                     "consumed again after a restart)", len(messages), exc_info=True)
        os._exit(70)


_batch_publisher: Publisher | None = None


async def _on_fetched(messages: list[RawMessage], offsets: dict) -> None:
    """`BatchConsumer`'s hand-off: one fetched batch of `transactions` records, acked once published."""
    global _batch_publisher
    if _batch_publisher is None:
        install_outage_filter()  # Faust has set up its log handlers by now
        _batch_publisher = Publisher(app.producer.send, engine.metrics, producer=app.producer._ensure_producer())
    await app.consumer.ack_when_done(_decide_and_publish(messages, _batch_publisher), offsets)


BatchConsumer.batch_topics = frozenset({topics.transactions})
BatchConsumer.on_batch = staticmethod(_on_fetched)


@app.agent(transactions_topic)
async def decide(stream: faust.StreamT) -> None:
    """Micro-batches in, decisions and dead letters out; a batch is done (and its offsets can be committed)
    only once every outcome is acknowledged by the brokers. With `worker.batch_fetch` on (the default), the
    records reach `_on_fetched` straight from the consumer and this agent only holds the subscription."""
    install_outage_filter()  # Faust has set up its log handlers by now
    within = worker.batch_window_ms / 1000.0
    # Straight to the Kafka producer (not `topic.send`, whose per-message bookkeeping costs more than the decision).
    publisher = Publisher(app.producer.send, engine.metrics)
    async for batch in stream.take_events(worker.max_batch, within=within):
        await _decide_and_publish([RawMessage(e.message.value, e.message.key, e.message.topic, e.message.partition,
                                              e.message.offset) for e in batch], publisher)


@app.agent(verdicts_topic)
async def count_analyst_verdicts(stream: faust.StreamT) -> None:
    """Analysts' verdicts counted against the worker's decisions; malformed or unknown ones are dead letters."""
    publisher = Publisher(app.producer.send, engine.metrics)
    async for batch in stream.take_events(worker.max_batch, within=1.0):
        messages = [RawMessage(e.message.value, e.message.key, e.message.topic, e.message.partition, e.message.offset)
                    for e in batch]
        try:
            while True:
                try:
                    letters = count_verdicts(messages, engine.store, engine.metrics, time.time())
                    break
                except StateUnavailable as exc:  # not counted yet: ask again rather than lose the verdicts
                    log.warning("verdicts wait for Redis: %s", exc, extra={"dependency": "redis"})
                    await asyncio.sleep(worker.redis_retry_after_s)
            await publisher.publish([OutputRecord(topics.dead_letter, key, orjson.dumps(letter))
                                     for key, letter in letters])
        except Exception:  # a bug: Faust would ack these verdicts uncounted, so stop before it can
            log.critical("cannot count %d verdicts; stopping without committing them", len(messages), exc_info=True)
            os._exit(70)


@app.timer(worker.reload_interval_s)
async def hot_reload() -> None:
    reloader.check()


@app.timer(1.0)
async def export_feature_drift() -> None:
    engine.export_drift()


@app.timer(5.0)
async def export_consumer_lag() -> None:
    consumer = app.consumer
    current = {}
    for tp in consumer.assignment():
        if tp.topic != topics.transactions:
            continue
        position = await consumer.position(tp)
        highwater = consumer.highwater(tp)
        if position is not None and highwater is not None:
            current[(tp.topic, str(tp.partition))] = max(0, highwater - position)
    lag = engine.metrics.consumer_lag
    lag.clear()  # partitions revoked by a rebalance must not keep reporting their last lag
    for labels, value in current.items():
        lag.labels(*labels).set(value)
