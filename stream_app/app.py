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
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from fraudmon.core.config import KafkaSettings, load_settings
from fraudmon.core.errors import FraudMonitorError, StateUnavailable
from fraudmon.core.logs import configure_logging, install_outage_filter, json_logging_config
from stream_app.engine import RawMessage
from stream_app.publish import OutputRecord, Publisher, outcome_records
from stream_app.runtime import HotReloader, build_engine, check_ports, wait_for_kafka, wait_for_state_store
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


class ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the aiokafka consumer's fetch wait set to `fetch_max_wait_ms` (Faust fixes
    it at 1,500 ms). aiokafka keeps one fetch request in flight per broker, and sends one for the partitions that
    are not buffered: the idle ones (verdicts, Faust's own) while the worker is still deciding the busy ones. The
    broker holds such a request until data comes or the wait ends, so the busy partitions could not be fetched
    again for up to the whole wait (a 1.5 s stall under load, and backlogs of seconds: README "Performance")."""

    fetch_max_wait_ms = 1500

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by the consumer's Fetcher when it starts
        return consumer


class Consumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer on a `ConsumerThread` (both the batch path and Faust's per-message one)."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class BatchConsumer(Consumer):
    """Faust's aiokafka consumer, with the records of `batch_topics` handed to `on_batch` one fetched batch at a
    time instead of one message at a time through Faust's conductor, stream and agent (whose per-message tasks
    and queues cost several times the decision itself: `fraudmon bench`, README "Performance"). Every other
    topic (verdicts, Faust's own) takes Faust's usual path. `on_batch` gets the records as `RawMessage`s and their
    offsets per partition, and acks those (`ack_offsets`, `Consumer.ack`'s bookkeeping) only once the outcome is
    published; Faust commits acked offsets as usual."""

    batch_topics: frozenset[str] = frozenset()
    on_batch = None  # async (list of RawMessage, {tp: [offset, ...]}) -> None

    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - the Fetcher's loop
        """Faust's loop (`Consumer._drain_messages` and `getmany`: flow control, generations, read offsets,
        gaps), per fetched partition instead of per record where it can be: the end offset is tracked once per
        partition, and the records of `batch_topics` become one batch for `on_batch`."""
        callback, on_batch, app = self.callback, self.on_batch, self.app
        consumer_should_stop, fetcher_should_stop = self._stopped.is_set, fetcher._stopped.is_set
        get_read_offset, set_read_offset = self._read_offset.__getitem__, self._read_offset.__setitem__
        acks_enabled_for, track_end_offset = app.topics.acks_enabled_for, app.monitor.track_tp_end_offset
        batch_topics, to_message = self.batch_topics, self._to_message
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                fetched, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if fetched is None or self.should_stop:
                    continue
                if not self.flow_active:
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning(f"exception performing seek when flow not active {exc}")
                    continue
                generation, batch, offsets = app.consumer_generation_id, [], {}
                for tp, records in fetched.items():
                    if not self.flow_active or app.consumer_generation_id != generation:
                        break  # a rebalance began: what is left is fetched again from the committed offsets
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    track_end_offset(tp, self.highwater(tp))
                    in_batch = tp.topic in batch_topics
                    if in_batch:
                        read_offsets = offsets.setdefault(tp, [])
                    for record in records:
                        offset = record.offset
                        read = get_read_offset(tp)
                        if read is not None and offset < read:
                            continue  # read before (Faust drops these too)
                        if read and offset - read > 1 and acks_enabled_for(tp.topic):
                            await self._add_gap(tp, read + 1, offset)
                        if in_batch:  # the engine's form straight from the record: no Faust message per record
                            batch.append(RawMessage(record.value, record.key, tp.topic, tp.partition, offset))
                            read_offsets.append(offset)
                        else:
                            await self.wait_first(callback(to_message(tp, record)), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                if batch and app.consumer_generation_id == generation:
                    await on_batch(batch, offsets)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def ack_offsets(self, offsets: dict) -> None:
        """`Consumer.ack` for every offset of `offsets` ({tp: [offset, ...]}), without a message per record:
        the same bookkeeping (under Faust's ack lock), so that Faust commits them as it commits acked messages."""
        with ack_lock:
            acked_now = 0
            for tp, read in offsets.items():
                if not self.app.topics.acks_enabled_for(tp.topic):
                    continue
                committed = self._committed_offset[tp]
                index, acked = self._acked_index[tp], self._acked[tp]
                for offset in read:
                    if (committed is None or offset >= committed) and offset not in index:
                        index.add(offset)
                        acked.append(offset)
                        acked_now += 1
            self._n_acked += acked_now
            notify(self._waiting_for_ack)


class Transport(aiokafka_driver.Transport):
    Consumer = Consumer


class BatchTransport(aiokafka_driver.Transport):
    Consumer = BatchConsumer


class App(faust.App):
    """A Faust app whose consumer is `BatchConsumer` when `worker.batch_fetch` is on, else `Consumer`."""

    batch_fetch = True

    def _new_transport(self):
        return (BatchTransport if self.batch_fetch else Transport)(self.conf.broker_consumer, self)


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
    value_serializer="raw",
    key_serializer="raw",
    web_enabled=worker.web_port > 0,  # Faust's own web server (its /health-like pages); 0 disables it
    web_port=worker.web_port or 6066,
    logging_config=json_logging_config(settings.logging.level) if settings.logging.json_logs else None,
    topic_partitions=topics.partitions,
    topic_replication_factor=topics.replication_factor,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=worker.session_timeout_s,
    broker_heartbeat_interval=worker.heartbeat_interval_s,
    producer_acks=-1,
    producer_linger=0.0,  # decisions go out as whole record batches already: waiting for more only delays them
    producer_max_batch_size=256 * 1024,  # a batch's decisions go out as one record batch per partition
    broker_max_poll_records=max(2000, worker.max_batch * 4),
    consumer_max_fetch_size=worker.fetch_max_bytes,  # Faust's 1 MiB: the worker waited for fetches a third of the time
    stream_buffer_maxsize=max(8192, worker.max_batch * 8),
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
        "serving model %s (%s), %d rules, latency budget %.0f ms, metrics on :%d",
        engine.model.name, engine.model.version, len(engine.rules.rules), worker.latency_budget_ms,
        worker.metrics_port,
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
    generation = app.consumer_generation_id
    await _decide_and_publish(messages, _batch_publisher)
    if app.consumer_generation_id != generation:
        return  # a rebalance meanwhile: the partitions' new owners decide these again (the same way)
    app.consumer.ack_offsets(offsets)


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
