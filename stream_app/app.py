"""The Faust app: `faust -A stream_app.app worker -l info` (or `fraudmon worker`).

The agent is glue: it takes micro-batches from `transactions`, hands them to the `DecisionEngine`, and publishes
decisions to `transaction-scores` (all) and `flagged-transactions` (flags), and dead letters to the DLQ.
Configuration comes from `config/monitor.yaml` and `FRAUDMON_*` environment variables.
"""

from __future__ import annotations

import logging
import ssl
import sys
import time

import faust
import orjson

from fraudmon.config import KafkaSettings, load_settings
from fraudmon.errors import FraudMonitorError
from fraudmon.logs import configure_logging, json_logging_config
from stream_app.engine import RawMessage
from stream_app.runtime import HotReloader, build_engine, check_ports, wait_for_kafka, wait_for_state_store

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
reloader = HotReloader(engine, settings.resolve(worker.model_path), settings.resolve(worker.rules_path))

app = faust.App(
    worker.app_id,
    broker=[f"kafka://{host.strip()}" for host in settings.kafka.bootstrap_servers.split(",")],
    broker_credentials=_credentials(settings.kafka),
    value_serializer="raw",
    key_serializer="raw",
    web_enabled=worker.web_port > 0,  # Faust's own web server (its /health-like pages); 0 disables it
    web_port=worker.web_port or 6066,
    logging_config=json_logging_config(settings.logging.level) if settings.logging.json_logs else None,
    topic_partitions=topics.partitions,
    topic_replication_factor=topics.replication_factor,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    producer_linger=0.002,
    broker_max_poll_records=max(2000, worker.max_batch * 4),
    stream_buffer_maxsize=max(8192, worker.max_batch * 8),
)

transactions_topic = app.topic(topics.transactions, key_type=bytes, value_type=bytes)


@app.on_worker_init.connect
def _on_worker_init(app: faust.App, **_: object) -> None:
    wait_for_kafka(settings.kafka.bootstrap_servers)
    wait_for_state_store(engine.store)
    engine.metrics.serve(worker.metrics_port)
    log.info(
        "serving model %s (%s), %d rules, latency budget %.0f ms, metrics on :%d",
        engine.model.name, engine.model.version, len(engine.rules.rules), worker.latency_budget_ms,
        worker.metrics_port,
    )


@app.agent(transactions_topic)
async def decide(stream: faust.StreamT) -> None:
    """Micro-batches in, decisions and dead letters out."""
    within = worker.batch_window_ms / 1000.0
    metrics = engine.metrics
    send = app.producer.send
    async for batch in stream.take_events(worker.max_batch, within=within):
        messages = [
            RawMessage(e.message.value, e.message.key, e.message.topic, e.message.partition, e.message.offset)
            for e in batch
        ]
        outcome = engine.process(messages)
        # Straight to the Kafka producer (not `topic.send`, whose per-message bookkeeping costs more than the
        # decision itself). At-least-once holds: Faust flushes the producer before it commits offsets.
        for key, letter in outcome.dead_letters:
            await send(topics.dead_letter, key, orjson.dumps(letter), None, None, None)
        for decision in outcome.decisions:
            key = decision["account_id"].encode()
            value = orjson.dumps(decision)
            await send(topics.scores, key, value, None, None, None)
            if decision["decision"] == "flag":
                await send(topics.flagged, key, value, None, None, None)
        published_s = time.time()
        observe = metrics.end_to_end_seconds.observe
        for event in outcome.events:
            observe(max(0.0, published_s - event.timestamp_ms / 1000.0))


@app.timer(worker.reload_interval_s)
async def hot_reload() -> None:
    reloader.check()


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
