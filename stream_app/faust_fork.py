"""Every place the worker reaches into faust-streaming's and aiokafka's private code, in one module.

- `App._new_transport` picks the transport below.
- `ConsumerThread` sets the aiokafka consumer's private fetch wait (Faust fixes it at 1,500 ms), and stamps each
  fetch it hands over (for the batch trace, `stream_app.tracing`).
- `BatchConsumer._drain_messages` is a copy of Faust's `Consumer._drain_messages` and `getmany`, changed to hand
  fetched batches over whole; `BatchConsumer.ack_offsets` does `Consumer.ack`'s bookkeeping on its private fields.
- `aiokafka_producer`, `wait_on_metadata` and `partition_for` reach the aiokafka producer under Faust's.

It is right for the versions in `WRITTEN_FOR` only. `UPSTREAM` holds a digest of each upstream function this code
copies or depends on; `tests/test_faust_fork.py` fails, naming what to re-read, when an installed version or
one of those functions differs."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import time
from collections.abc import Awaitable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from stream_app.engine import RawMessage

WRITTEN_FOR = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

UPSTREAM = {
    # copied by BatchConsumer._drain_messages (flow control, generations, read offsets, gaps), and what it calls
    "faust.transport.consumer:Consumer._drain_messages": "44a2500309e83c63",
    "faust.transport.consumer:Consumer.getmany": "4b168d84882a70d6",
    "faust.transport.consumer:Consumer._wait_next_records": "6218e1969a636b3f",
    "faust.transport.consumer:Consumer._add_gap": "4df2573ded7c1c2c",
    # BatchConsumer.ack_offsets: the same bookkeeping, on the fields Consumer.__init__ sets
    "faust.transport.consumer:Consumer.ack": "5fcf41cf45153475",
    "faust.transport.consumer:Consumer.__init__": "302410d59e6972d1",
    # ConsumerThread: the consumer it builds, and where aiokafka keeps the fetch wait until its Fetcher starts
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread": "0870ec53dea75083",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": "c2701bfc3e6f6cad",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._fetch_records": "39a2c6c79fc1455a",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__": "01506f316191f7c9",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start": "2f1ba70443327538",
    # aiokafka_producer, wait_on_metadata, partition_for
    "faust.app.base:App._new_transport": "42db531312dd776f",
    "faust.transport.drivers.aiokafka:Producer._ensure_producer": "5592a4bbdf251325",
    "aiokafka.client:AIOKafkaClient._wait_on_metadata": "52b0a5ee78ef3aa0",
    "aiokafka.producer.producer:AIOKafkaProducer._partition": "e45fa9c539d431d1",
}


def upstream_digest(where: str) -> str:
    """The first 16 hex digits of the sha256 of the installed source of `where` ("module:Class.function")."""
    module, _, path = where.partition(":")
    target: Any = importlib.import_module(module)
    for name in path.split("."):
        target = getattr(target, name)
    return hashlib.sha256(inspect.getsource(target).encode()).hexdigest()[:16]


class ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the aiokafka consumer's fetch wait set to `fetch_max_wait_ms` (Faust fixes
    it at 1,500 ms). aiokafka keeps one fetch request in flight per broker, and sends one for the partitions that
    are not buffered: the idle ones (verdicts, Faust's own) while the worker is still deciding the busy ones. The
    broker holds such a request until data comes or the wait ends, so the busy partitions could not be fetched
    again for up to the whole wait (a 1.5 s stall under load, and backlogs of seconds)."""

    fetch_max_wait_ms = 1500
    fetched_ms = 0.0  # when this thread last handed a fetch over (ms since the epoch), for the batch trace

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by the consumer's Fetcher when it starts
        return consumer

    async def _fetch_records(self, *args, **kwargs):
        records = await super()._fetch_records(*args, **kwargs)
        self.fetched_ms = time.time() * 1000.0
        return records


class Consumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer on a `ConsumerThread` (both the batch path and Faust's per-message one)."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class BatchConsumer(Consumer):
    """Faust's aiokafka consumer, with the records of `batch_topics` handed to `on_batch` one fetched batch at a
    time instead of one message at a time through Faust's conductor, stream and agent (whose per-message tasks
    and queues cost several times the decision itself). Every other topic (verdicts, Faust's own) takes Faust's
    usual path. `on_batch` gets the records as `RawMessage`s and their offsets per partition, and acks those only
    once the outcome is published (`ack_when_done`, with `Consumer.ack`'s bookkeeping); Faust commits acked
    offsets as usual."""

    batch_topics: frozenset[str] = frozenset()
    on_batch = None  # async (list of RawMessage, {tp: [offset, ...]}) -> None
    trace_fetches = False  # set `fetch_times` before each `on_batch` (the batch trace)
    fetch_times: dict[str, float] = {}  # the oldest record's `append` time, `fetched` and `fetch_returned`, ms

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
                if self.trace_fetches and fetched:
                    self.fetch_times = {"append": min(records[0].timestamp for records in fetched.values()),
                                        "fetched": self._thread.fetched_ms, "fetch_returned": time.time() * 1000.0}
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

    async def ack_when_done(self, outcome_published: Awaitable[None], offsets: dict) -> None:
        """Await `outcome_published` (deciding and publishing a fetched batch), then ack the batch's `offsets`,
        unless a rebalance began meanwhile: the partitions' new owners take those records again."""
        generation = self.app.consumer_generation_id
        await outcome_published
        if self.app.consumer_generation_id == generation:
            self.ack_offsets(offsets)

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


def aiokafka_producer(app) -> Any:
    """The aiokafka producer under the Faust app's (started with it)."""
    return app.producer._ensure_producer()


async def wait_on_metadata(producer: Any, topic: str) -> None:
    """Wait until the aiokafka `producer` knows `topic`'s partitions (its `send` does the same)."""
    await producer.client._wait_on_metadata(topic)


def partition_for(producer: Any, topic: str, key: bytes | None, value: bytes) -> int:
    """The partition the aiokafka `producer`'s own partitioner chooses for a record, as its `send` would."""
    return producer._partition(topic, None, None, None, key, value)
