"""`fraudmon label`: post an analyst's verdict on a transaction to the verdicts topic, after checking that the
worker decided it (its decision store in Redis), since the worker counts only verdicts on decisions it keeps."""

from __future__ import annotations

import getpass
import time
from pathlib import Path

import orjson
import redis
import typer
from kafka import KafkaProducer
from kafka.errors import KafkaError
from redis.backoff import NoBackoff
from redis.retry import Retry

from fraudmon.core.config import Settings
from fraudmon.core.console import fail, settings_or_fail
from fraudmon.core.errors import InvalidEvent, StateUnavailable
from fraudmon.core.events import Verdict, parse_verdict, verdict_to_dict
from stream_app.state import RedisStateStore, StateStore

REDIS_TIMEOUT_S = 5.0


def decision_store(settings: Settings) -> StateStore:
    """The worker's decision store, asked with a person's patience (seconds) rather than the worker's latency
    budget, which `make_state_store` derives its timeouts from."""
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=REDIS_TIMEOUT_S,
                                  socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
    return RedisStateStore(client, settings.redis.key_prefix, settings.redis.dedupe_ttl_s,
                           settings.worker.verdict_window_s)


def decided(settings: Settings, transaction_id: str) -> str:
    """What the worker decided on the transaction (`flag (rules: a, b)`); a clean exit when it has no decision
    on it (1) or Redis does not answer (2)."""
    try:
        remembered = decision_store(settings).recall(transaction_id)
    except StateUnavailable as exc:
        fail(f"cannot check that the worker decided {transaction_id!r}: {str(exc).rstrip('.')}: start the stack "
             "(`fraudmon stack up`), check redis.url, or post the verdict unchecked with --force")
    if remembered is None:
        fail(f"the worker has no decision on {transaction_id!r} in the last {settings.worker.verdict_window_s} s "
             "(worker.verdict_window_s): check the id, or post the verdict anyway with --force (the worker will "
             "dead-letter it)", code=1)
    decision, _, rules = remembered.partition("|")
    return f"{decision} (rules: {rules.replace(',', ', ')})" if rules else decision


def label_command(
    transaction_id: str = typer.Argument(..., help="The transaction the verdict is about."),
    fraud: bool = typer.Option(False, "--fraud", help="It was fraud."),
    legit: bool = typer.Option(False, "--legit", help="It was legitimate."),
    reviewer: str | None = typer.Option(None, "--reviewer", "-r", help="Who reviewed it (default: your login)."),
    note: str | None = typer.Option(None, "--note", "-n", help="A short note for the record."),
    force: bool = typer.Option(False, "--force", help="Post without checking that the worker decided the "
                                                     "transaction (Redis down, or decided too long ago)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (default config/monitor.yaml)."),
) -> None:
    """Post a verdict on a transaction the worker decided: it counts the verdict against its decision
    (`fraud_verdicts_total{decision, verdict}`), and `fraudmon train --verdicts` can learn from it. A transaction
    the worker has no decision on (worker.verdict_window_s) is refused unless --force.

    Example: fraudmon label tx-0042 --fraud --reviewer ana --note "card reported stolen"
    """
    if fraud == legit:
        fail("say --fraud or --legit (exactly one)")
    settings = settings_or_fail(config)
    decision = "not checked (--force)" if force else decided(settings, transaction_id)
    verdict = Verdict(transaction_id, "fraud" if fraud else "legit", reviewer or getpass.getuser(),
                      int(time.time() * 1000), note)
    value = orjson.dumps(verdict_to_dict(verdict))
    try:
        parse_verdict(value)
    except InvalidEvent as exc:
        fail(str(exc))
    try:
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers.split(","), acks="all",
                                 max_block_ms=10_000, **settings.kafka.client_options())
        producer.send(settings.topics.verdicts, key=transaction_id.encode(), value=value).get(timeout=30)
        producer.close(timeout=5)
    except KafkaError as exc:
        fail(f"could not post the verdict to {settings.topics.verdicts} at {settings.kafka.bootstrap_servers} "
             f"({exc.__class__.__name__}): start the stack (`fraudmon stack up`) or check kafka.bootstrap_servers")
    typer.echo(f"verdict {verdict.label} on {transaction_id} posted to {settings.topics.verdicts}; the worker's "
               f"decision: {decision}")
