"""Publishing a batch's outcome: every decision and dead letter is delivered before the batch counts as done.

The worker commits a record's offset only after this returns, so a record is never committed without its
outcome. When the brokers refuse or do not answer, the records are sent again with a growing pause; meanwhile
the worker takes no new batch, and Faust stops fetching once its buffers are full (backpressure).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from fraudmon.core.config import TopicSettings
from stream_app.engine import BatchOutcome
from stream_app.faust_fork import partition_for, wait_on_metadata
from stream_app.metrics import WorkerMetrics

log = logging.getLogger(__name__)

PARTITION_CACHE = 200_000  # keys whose partition a publisher remembers per topic (then it starts again)
MAX_KEY_BYTES = 1024  # a dead letter's key is the input key, cut to this size so that it can always be published


@dataclass(frozen=True, slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes


def outcome_records(outcome: BatchOutcome, topics: TopicSettings) -> list[OutputRecord]:
    """Dead letters to the DLQ; every decision to the scores topic and flags also to the flagged topic."""
    records = [OutputRecord(topics.dead_letter, key[:MAX_KEY_BYTES] if key else key, orjson.dumps(letter))
               for key, letter in outcome.dead_letters]
    for decision in outcome.decisions:
        key = decision["account_id"].encode()
        value = orjson.dumps(decision)
        records.append(OutputRecord(topics.scores, key, value))
        if decision["decision"] == "flag":
            records.append(OutputRecord(topics.flagged, key, value))
    return records


Send = Callable[..., Awaitable[Awaitable[object]]]


class Publisher:
    """Sends records through Faust's producer and waits for every acknowledgement, retrying what failed.

    With `producer` (the aiokafka producer under Faust's), the records go out as one record batch per partition
    (aiokafka's `create_batch`/`send_batch`: one delivery future per batch instead of one per record), keyed and
    partitioned exactly as `send` would; a failed batch is sent again whole."""

    def __init__(self, send: Send, metrics: WorkerMetrics, first_retry_s: float = 0.2,
                 max_retry_s: float = 10.0, producer: Any = None) -> None:
        self._send = send
        self._metrics = metrics
        self._first_retry_s = first_retry_s
        self._max_retry_s = max_retry_s
        self._producer = producer
        self._partition_cache: dict[str, tuple[frozenset[int], dict[bytes, int]]] = {}

    async def publish(self, records: list[OutputRecord], handed: Callable[[], None] | None = None) -> None:
        """Return once every record is acknowledged by the brokers (acks=all); retry failures until then.
        `handed` is called once the producer has every record of the first attempt (the batch trace)."""
        pending, pause = records, self._first_retry_s
        while pending:
            sent = await (self._send_batches(pending) if self._producer is not None else self._send_each(pending))
            if handed is not None:
                handed()
                handed = None
            results = await asyncio.gather(*(delivery for _, delivery in sent), return_exceptions=True)
            failed = [(record, result) for (group, _), result in zip(sent, results, strict=True)
                      if isinstance(result, Exception) for record in group]
            if not failed:
                return
            pending = [record for record, _ in failed]
            self._metrics.publish_retries.inc(len(pending))
            error = failed[0][1]
            log.warning("could not publish %d records (%s: %s); sending them again in %.1fs, no new input meanwhile",
                        len(pending), error.__class__.__name__, error, pause, extra={"dependency": "kafka"})
            await asyncio.sleep(pause)
            pause = min(pause * 2, self._max_retry_s)


    async def _send_each(self, records: list[OutputRecord]) -> list[tuple[list[OutputRecord], Awaitable]]:
        sent = []
        for record in records:
            try:
                delivery = await self._send(record.topic, record.key, record.value, None, None, None)
            except Exception as exc:  # refused before sending: counts as a failed delivery
                delivery = _failed(exc)
            sent.append(([record], delivery))
        return sent

    async def _send_batches(self, records: list[OutputRecord]) -> list[tuple[list[OutputRecord], Awaitable]]:
        producer, by_partition = self._producer, {}
        try:
            known = {}
            for topic in {record.topic for record in records}:
                await wait_on_metadata(producer, topic)
                known[topic] = self._partitions_of(topic)
            for record in records:
                topic, key = record.topic, record.key
                cache = known[topic]
                if key is None:  # spread over the available partitions: chosen anew each time
                    where = (topic, partition_for(producer, topic, None, record.value))
                elif (number := cache.get(key)) is not None:
                    where = (topic, number)
                else:
                    number = cache[key] = partition_for(producer, topic, key, record.value)
                    where = (topic, number)
                by_partition.setdefault(where, []).append(record)
        except Exception as exc:  # no metadata (the brokers are away): every record failed this time
            return [(records, _failed(exc))]
        sent = []
        for (topic, partition), group in by_partition.items():
            batch, members = producer.create_batch(), []
            for record in group:
                if batch.append(timestamp=None, key=record.key, value=record.value) is None:  # full
                    sent.append((members, await self._send_batch(batch, topic, partition)))
                    batch, members = producer.create_batch(), []
                    if batch.append(timestamp=None, key=record.key, value=record.value) is None:
                        sent.append(([record], _failed(ValueError(f"a record of {len(record.value)} bytes does "
                                                                   "not fit in a producer batch"))))
                        continue
                members.append(record)
            if members:
                sent.append((members, await self._send_batch(batch, topic, partition)))
        return sent

    def _partitions_of(self, topic: str) -> dict[bytes, int]:
        """Each key's partition in `topic` as the producer's partitioner chose it (a murmur2 hash in Python, about
        3 us a record), kept while the topic's partitions stay the same and up to `PARTITION_CACHE` keys."""
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        cached = self._partition_cache.get(topic)
        if cached is None or cached[0] != partitions or len(cached[1]) > PARTITION_CACHE:
            cached = self._partition_cache[topic] = (frozenset(partitions or ()), {})
        return cached[1]

    async def _send_batch(self, batch: Any, topic: str, partition: int) -> Awaitable:
        try:
            return await self._producer.send_batch(batch, topic, partition=partition)
        except Exception as exc:  # refused before sending: counts as a failed delivery
            return _failed(exc)


def _failed(exc: Exception) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
