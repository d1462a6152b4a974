"""The Faust app: `faust -A stream_app.app worker -l info` (or `fraudmon worker`).

`create_app(settings)` builds it. Importing this module does no work: its `app` (what Faust's `-A` reads) is built
on first access from `config/monitor.yaml` and the `FRAUDMON_*` environment variables, and a configuration that
cannot start ends the process with exit code 2 and one line saying what to fix.

The agent is glue: it takes micro-batches from `transactions`, hands them to the `DecisionEngine`, and publishes
decisions to `transaction-scores` (all) and `flagged-transactions` (flags), and dead letters to the DLQ.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faust
import orjson
from aiokafka import errors as Errors

from fraudmon.core.config import KafkaSettings, Settings, load_settings
from fraudmon.core.errors import FraudMonitorError, StateUnavailable
from fraudmon.core.logs import configure_logging, install_outage_filter, json_logging_config
from stream_app.engine import RawMessage
from stream_app.faust_fork import aiokafka_producer, wait_on_metadata
from stream_app.lists import ListFollower
from stream_app.publish import OutputRecord, Publisher, outcome_records
from stream_app.runtime import HotReloader, build_engine, check_ports, wait_for_kafka, wait_for_state_store
from stream_app.tracing import BatchTrace, TracedStore
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


class _QuietCoordinatorLookup(logging.Filter):
    """aiokafka logs every failed group coordinator lookup as an error and retries it. A fresh broker answers
    "coordinator not available" (Kafka error 15) until it has created its `__consumer_offsets` partitions and
    elected their leader, which is a normal start, not an error: such failures are logged at debug for the
    first `quiet_s` seconds, and as warnings after that."""

    def __init__(self, quiet_s: float = 30.0) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self._first_s: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not str(record.msg).startswith("Group Coordinator Request failed"):
            return True
        error = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if not isinstance(error, Errors.CoordinatorNotAvailableError):
            return True
        now = time.monotonic()
        self._first_s = self._first_s if self._first_s is not None else now
        level = logging.DEBUG if now - self._first_s < self.quiet_s else logging.WARNING
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return logging.getLogger(record.name).isEnabledFor(level)


def restore_log_level(level: str) -> None:
    """Faust's worker, at levels WARNING and above, sets the root logger to DEBUG for its start-up spinner and
    leaves it there, so every debug line of aiokafka and kafka-python (several per fetch and per send) is built
    and handed to the handlers for nothing. Once the worker runs: the configured level, and no spinner."""
    from faust.utils.terminal.spinners import SpinnerHandler

    root = logging.getLogger()
    root.handlers[:] = [handler for handler in root.handlers if not isinstance(handler, SpinnerHandler)]
    root.setLevel(level.upper())


def faust_data_dir(settings: Settings) -> Path:
    """Faust's own data directory: `worker.data_dir`, else `faust` in the stack's data directory."""
    if settings.worker.data_dir:
        return settings.resolve(settings.worker.data_dir)
    return settings.resolve(settings.stack.data_dir) / "faust"


def create_app(settings: Settings) -> faust.App:
    """The worker's Faust app on `settings`: the model and rules loaded and checked and the ports checked (a
    `FraudMonitorError` says what to fix), its agents and timers registered. It connects to Kafka and Redis only
    when a Faust worker starts it."""
    engine = build_engine(settings)
    check_ports(settings)
    worker, topics = settings.worker, settings.topics
    lists = ListFollower(settings)  # the named lists, followed from their compacted topic into memory
    data_dir = faust_data_dir(settings)
    data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    reloader = HotReloader(engine, settings.resolve(worker.model_path), settings.resolve(worker.rules_path),
                           settings.resolve(worker.shadow_model_path) if worker.shadow_model_path else None)
    logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(_QuietCoordinatorLookup())

    trace = BatchTrace(settings.resolve(worker.trace_path)) if worker.trace_path else None
    if trace is not None:
        engine.store = TracedStore(engine.store, trace)

    App.batch_fetch = worker.batch_fetch
    ConsumerThread.fetch_max_wait_ms = worker.fetch_max_wait_ms
    app = App(
        worker.app_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings.kafka),
        datadir=str(data_dir),
        web_enabled=worker.web_port > 0,  # Faust's own web server (its /health-like pages); 0 disables it
        web_port=worker.web_port or 6066,
        web_bind=worker.web_bind,
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
            # A batch allocates thousands of short-lived containers, nearly all freed by reference counting: a
            # young collection every 100,000 allocations instead of 700 (the default) finds as little garbage for
            # less CPU.
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

    observe_end_to_end, size = engine.metrics.end_to_end_seconds.observe, worker.max_batch
    mark = trace.mark if trace is not None else None
    in_flight: list[asyncio.Future] = []  # the outcome being published, then its offsets acked: at most one

    async def deliver(records: list[OutputRecord], events: list, publisher: Publisher,
                      acked: Callable[[], None] | None, steps: dict[str, float] | None) -> None:
        """Publish one micro-batch's outcome until the brokers acknowledge all of it, then call `acked`."""
        try:
            await publisher.publish(records, (lambda: mark(steps, "handed")) if mark else None)
            published_s = time.time()
            if mark:
                mark(steps, "acknowledged")
            for event in events:
                observe_end_to_end(max(0.0, published_s - event.timestamp_ms / 1000.0))
            if acked is not None:
                acked()
        except Exception:  # a bug outside the engine: the batch must not be acked unpublished, so stop first
            log.critical("cannot publish the outcome of %d records; stopping without committing them (they are "
                         "consumed again after a restart)", len(records), exc_info=True)
            os._exit(70)

    async def decide_and_publish(messages: list[RawMessage], publisher: Publisher,
                                 acked: Callable[[], None] | None = None,
                                 steps: dict[str, float] | None = None) -> None:
        """Decide `messages` in micro-batches of at most `worker.max_batch`, and hand each micro-batch's outcome
        to the producer once the one before it (this fetch's or the last one's) is acknowledged by the brokers.
        Returns when the last is handed over: the next fetch is taken and decided while the brokers acknowledge
        this one, and `acked` is called once they have (`settled()` waits for that). Outcomes go out in order,
        and a bug stops the worker before the batch's offsets are acked. Each micro-batch's rule-state script is
        sent before the one before it is decided, so Redis runs it meanwhile. `steps`: the batch trace's marks."""
        try:
            if mark:
                mark(steps, "engine")
            upcoming = engine.start(messages[:size])
            for start in range(size, len(messages) + size, size):
                current = upcoming
                upcoming = engine.start(messages[start:start + size]) if start < len(messages) else None
                outcome = engine.finish(current)
                if mark:
                    mark(steps, "decided")
                records = outcome_records(outcome, topics)
                await settled()
                in_flight.append(asyncio.ensure_future(deliver(records, outcome.events, publisher,
                                                               acked if upcoming is None else None, steps)))
        except Exception:  # a bug outside the engine: the batch must not be acked unpublished, so stop first
            log.critical("cannot decide %d records; stopping without committing them (they are consumed again "
                         "after a restart)", len(messages), exc_info=True)
            os._exit(70)

    async def settled() -> None:
        """Return once the outcome being published is acknowledged and its offsets acked."""
        if in_flight:
            await in_flight.pop()

    batch_publisher: list[Publisher] = []

    def publisher_of_batches() -> Publisher:
        if not batch_publisher:
            install_outage_filter()  # Faust has set up its log handlers by now
            batch_publisher.append(Publisher(app.producer.send, engine.metrics, producer=aiokafka_producer(app)))
        return batch_publisher[0]

    @app.task
    async def set_log_level() -> None:
        """Runs once the worker has set up logging (`restore_log_level`)."""
        restore_log_level(settings.logging.level)

    @app.task
    async def learn_output_partitions() -> None:
        """Ask for the output topics' partitions at start, so that the first batch does not wait for them."""
        publisher_of_batches()
        producer = aiokafka_producer(app)
        for topic in (topics.scores, topics.flagged, topics.dead_letter):
            try:
                await wait_on_metadata(producer, topic)
            except Exception as exc:  # the first batch asks again (and retries until the brokers answer)
                log.debug("no partitions of %s yet: %s", topic, exc)

    async def on_fetched(messages: list[RawMessage], offsets: dict) -> None:
        """`BatchConsumer`'s hand-off: one fetched batch of `transactions` records, acked once its outcome is
        acknowledged (unless a rebalance began meanwhile: the partitions' new owners take those records again)."""
        publisher = publisher_of_batches()
        consumer, generation = app.consumer, app.consumer_generation_id
        steps = None
        if trace is not None:
            steps = engine.store.steps = trace.steps(n=len(messages), **consumer.fetch_times)

        def acked() -> None:
            if app.consumer_generation_id == generation:
                consumer.ack_offsets(offsets)
            if steps is not None:
                trace.mark(steps, "acked")
                trace.write(steps)

        await decide_and_publish(messages, publisher, acked, steps)

    BatchConsumer.batch_topics = frozenset({topics.transactions})
    BatchConsumer.on_batch = staticmethod(on_fetched)
    BatchConsumer.trace_fetches = trace is not None
    if trace is not None:
        @app.task
        async def watch_event_loop() -> None:
            await trace.watch_loop()

        @app.timer(1.0, name=f"{__name__}.flush_trace")
        async def flush_trace() -> None:
            trace.flush()

    @app.agent(transactions_topic, name=f"{__name__}.decide")
    async def decide(stream: faust.StreamT) -> None:
        """Micro-batches in, decisions and dead letters out; a batch is done (and its offsets can be committed)
        only once every outcome is acknowledged by the brokers. With `worker.batch_fetch` on (the default), the
        records reach `on_fetched` straight from the consumer and this agent only holds the subscription, with
        no timer (`take_events` wakes up every `batch_window_ms` even with nothing to take)."""
        if worker.batch_fetch:
            async for _ in stream:  # never an event: the consumer hands this topic's records to `on_fetched`
                pass
            return
        install_outage_filter()  # Faust has set up its log handlers by now
        within = worker.batch_window_ms / 1000.0
        # Straight to the Kafka producer (not `topic.send`, whose per-message bookkeeping costs more than the
        # decision).
        publisher = Publisher(app.producer.send, engine.metrics)
        async for batch in stream.take_events(worker.max_batch, within=within):
            await decide_and_publish([RawMessage(e.message.value, e.message.key, e.message.topic,
                                                 e.message.partition, e.message.offset) for e in batch], publisher)
            await settled()  # Faust acks these events once the next ones are taken

    @app.agent(verdicts_topic, name=f"{__name__}.count_analyst_verdicts")
    async def count_analyst_verdicts(stream: faust.StreamT) -> None:
        """Analysts' verdicts counted against the worker's decisions; malformed or unknown ones are dead letters."""
        publisher = Publisher(app.producer.send, engine.metrics)
        async for batch in stream.take_events(worker.max_batch, within=1.0):
            messages = [RawMessage(e.message.value, e.message.key, e.message.topic, e.message.partition,
                                   e.message.offset) for e in batch]
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
                log.critical("cannot count %d verdicts; stopping without committing them", len(messages),
                             exc_info=True)
                os._exit(70)

    @app.timer(worker.reload_interval_s, name=f"{__name__}.hot_reload")
    async def hot_reload() -> None:
        reloader.check()

    @app.timer(1.0, name=f"{__name__}.export_feature_drift")
    async def export_feature_drift() -> None:
        engine.export_drift()

    @app.timer(5.0, name=f"{__name__}.export_consumer_lag")
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

    return app


def __getattr__(name: str) -> faust.App:
    """`app`, built on first access from the configured settings (what `faust -A stream_app.app` reads)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        settings = load_settings()
        configure_logging(settings.logging.level, settings.logging.json_logs)
        built = create_app(settings)
    except FraudMonitorError as exc:
        print(f"fraud-monitor worker cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    globals()["app"] = built
    return built
