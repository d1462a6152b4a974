"""Faust's Kafka transport as the worker uses it: the consumer's fetch wait made configurable, and fetched batches
of the input topic handed to a callback whole (`BatchConsumer`), past Faust's per-message stream. The code that
reaches into Faust's private parts is in `stream_app.faust_fork`. Kept apart from `stream_app.app` so that
`fraudmon bench` can run the same transport alone."""

from __future__ import annotations

from stream_app.faust_fork import App, BatchConsumer, ConsumerThread

__all__ = ["App", "BatchConsumer", "ConsumerThread", "transport_options"]


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
