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

import orjson

from fraudmon.core.config import TopicSettings
from stream_app.engine import BatchOutcome
from stream_app.metrics import WorkerMetrics

log = logging.getLogger(__name__)

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
    """Sends records through Faust's producer and waits for every acknowledgement, retrying what failed."""

    def __init__(self, send: Send, metrics: WorkerMetrics, first_retry_s: float = 0.2,
                 max_retry_s: float = 10.0) -> None:
        self._send = send
        self._metrics = metrics
        self._first_retry_s = first_retry_s
        self._max_retry_s = max_retry_s

    async def publish(self, records: list[OutputRecord]) -> None:
        """Return once every record is acknowledged by the brokers (acks=all); retry failures until then."""
        pending, pause = records, self._first_retry_s
        while pending:
            deliveries = []
            for record in pending:
                try:
                    deliveries.append(await self._send(record.topic, record.key, record.value, None, None, None))
                except Exception as exc:  # refused before sending: counts as a failed delivery
                    deliveries.append(_failed(exc))
            results = await asyncio.gather(*deliveries, return_exceptions=True)
            failed = [(record, result) for record, result in zip(pending, results, strict=True)
                      if isinstance(result, Exception)]
            if not failed:
                return
            pending = [record for record, _ in failed]
            self._metrics.publish_retries.inc(len(pending))
            error = failed[0][1]
            log.warning("could not publish %d records (%s: %s); sending them again in %.1fs, no new input meanwhile",
                        len(pending), error.__class__.__name__, error, pause, extra={"dependency": "kafka"})
            await asyncio.sleep(pause)
            pause = min(pause * 2, self._max_retry_s)


def _failed(exc: Exception) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
