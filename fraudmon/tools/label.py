"""`fraudmon label`: post an analyst's verdict on a transaction to the verdicts topic, after checking that the
worker decided it (its decision store in Redis), since the worker counts only verdicts on decisions it keeps."""

from __future__ import annotations

import orjson
import redis
from kafka import KafkaProducer
from kafka.errors import KafkaError
from redis.backoff import NoBackoff
from redis.retry import Retry

from fraudmon.core.config import Settings
from fraudmon.core.errors import FraudMonitorError, StateUnavailable
from fraudmon.core.events import Verdict, parse_verdict, verdict_to_dict
from stream_app.state import RedisStateStore, StateStore

REDIS_TIMEOUT_S = 5.0


class UndecidedTransaction(FraudMonitorError):
    """The worker has no decision on the transaction (or it was decided too long ago to be remembered)."""


class LabelError(FraudMonitorError):
    """The verdict could not be checked or posted; the message says what to do."""


def decision_store(settings: Settings) -> StateStore:
    """The worker's decision store, asked with a person's patience: a few seconds, and no retry."""
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=REDIS_TIMEOUT_S,
                                  socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
    return RedisStateStore(client, settings.redis.key_prefix, settings.redis.dedupe_ttl_s,
                           settings.worker.verdict_window_s)


def decided(settings: Settings, transaction_id: str) -> str:
    """What the worker decided on the transaction (`flag (rules: a, b)`). Raises `UndecidedTransaction` when it has
    no decision on it, `LabelError` when Redis does not answer."""
    try:
        remembered = decision_store(settings).recall(transaction_id)
    except StateUnavailable as exc:
        raise LabelError(f"cannot check that the worker decided {transaction_id!r}: {str(exc).rstrip('.')}: start "
                         "the stack (`fraudmon stack up`), check redis.url, or post the verdict unchecked with "
                         "--force") from exc
    if remembered is None:
        raise UndecidedTransaction(
            f"the worker has no decision on {transaction_id!r} in the last {settings.worker.verdict_window_s} s "
            "(worker.verdict_window_s): check the id, or post the verdict anyway with --force (the worker will "
            "dead-letter it)")
    decision, _, rules = remembered.partition("|")
    return f"{decision} (rules: {rules.replace(',', ', ')})" if rules else decision


def post_verdict(settings: Settings, verdict: Verdict) -> None:
    """Send the verdict to the verdicts topic and wait for Kafka's acknowledgement."""
    value = orjson.dumps(verdict_to_dict(verdict))
    parse_verdict(value)  # what the worker will read: refuse here what it would dead-letter
    try:
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers.split(","), acks="all",
                                 max_block_ms=10_000, **settings.kafka.client_options())
        producer.send(settings.topics.verdicts, key=verdict.transaction_id.encode(), value=value).get(timeout=30)
        producer.close(timeout=5)
    except KafkaError as exc:
        raise LabelError(f"could not post the verdict to {settings.topics.verdicts} at "
                         f"{settings.kafka.bootstrap_servers} ({exc.__class__.__name__}): start the stack "
                         "(`fraudmon stack up`) or check kafka.bootstrap_servers") from exc
