"""Analysts' verdicts, counted against what the worker decided: `fraud_verdicts_total{decision, verdict}` gives
the confirmed precision of flags and the frauds that were passed, `fraud_rule_verdicts_total{rule, verdict}` each
live rule's confirmed precision. A malformed verdict, or one about a transaction
the worker has no recent decision on, is a dead letter with the reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fraudmon.core.errors import InvalidEvent, StateUnavailable
from fraudmon.core.events import parse_verdict
from stream_app.decision import build_dead_letter
from stream_app.engine import RawMessage
from stream_app.metrics import WorkerMetrics
from stream_app.state import StateStore


def count_verdicts(messages: Sequence[RawMessage], store: StateStore, metrics: WorkerMetrics,
                   received_s: float) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Count each valid verdict against the decision it is about; return dead letters for the others.
    Raises `StateUnavailable` when the store cannot be asked (the batch is then taken again)."""
    letters = []
    for message in messages:
        try:
            verdict = parse_verdict(message.value, int(received_s * 1000))
            remembered = store.recall(verdict.transaction_id)
            if remembered is None:
                raise InvalidEvent(f"transaction_id: no decision on {verdict.transaction_id!r} within the verdict "
                                   "window (worker.verdict_window_s): unknown id, or decided too long ago")
        except InvalidEvent as exc:
            letters.append((message.key, build_dead_letter(str(exc), message.value, message.topic,
                                                           message.partition, message.offset, received_s * 1000)))
            continue
        except StateUnavailable:
            raise
        decision, _, rules = remembered.partition("|")
        metrics.verdicts.labels(decision, verdict.label).inc()
        for rule in filter(None, rules.split(",")):
            metrics.rule_verdicts.labels(rule, verdict.label).inc()
    return letters
