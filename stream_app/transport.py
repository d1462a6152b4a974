"""Faust's Kafka transport as the worker uses it: the consumer's fetch wait made configurable, and fetched batches
of the input topic handed to a callback whole (`BatchConsumer`), past Faust's per-message stream. Kept apart from
`stream_app.app` (which builds the engine on import) so that `fraudmon bench` can run the same transport alone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from stream_app.engine import RawMessage


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
    offsets per partition, and acks those only once the outcome is published (`ack_when_done`, with
    `Consumer.ack`'s bookkeeping); Faust commits acked offsets as usual."""

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


def transport_options(max_batch: int, fetch_max_bytes: int) -> dict:
    """The Faust settings the worker's throughput and latency depend on (README "Performance"), shared with the
    bench's run of this transport alone."""
    return {
        "value_serializer": "raw",
        "key_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "producer_linger": 0.0,  # decisions go out as whole record batches already: waiting for more only delays
        "producer_max_batch_size": 256 * 1024,  # a batch's decisions go out as one record batch per partition
        "broker_max_poll_records": max(2000, max_batch * 4),
        "consumer_max_fetch_size": fetch_max_bytes,  # Faust's 1 MiB: the worker waited for fetches a third of the time
        "stream_buffer_maxsize": max(8192, max_batch * 8),
    }
