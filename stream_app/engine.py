"""The decision engine: raw messages in, decisions and dead letters out, one batch at a time.

Plain synchronous code shared by the Faust worker and by offline replay. Per batch: one onnxruntime call and
one state-store round trip. When the store is unavailable the engine decides from the model and the stateless
rules, marks the decisions degraded, and tries the store again after `retry_after_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fraudmon.errors import StateUnavailable
from stream_app.decision import build_dead_letter, build_decision
from stream_app.features import vectorize
from stream_app.metrics import WorkerMetrics
from stream_app.rules import RuleSet, evaluate, flagging_rules
from stream_app.schema import Event, InvalidEvent, format_timestamp, parse_event
from stream_app.scoring import OnnxModel
from stream_app.state import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed record, with where it came from (for the dead letter)."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class BatchOutcome:
    events: list[Event] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)


class DecisionEngine:
    """Validates, scores, checks rules and decides. `model` and `rules` may be swapped between batches."""

    def __init__(
        self,
        model: OnnxModel,
        rules: RuleSet,
        store: StateStore,
        *,
        metrics: WorkerMetrics | None = None,
        latency_budget_ms: float = 50.0,
        retry_after_s: float = 1.0,
        max_message_bytes: int = 65536,
    ) -> None:
        self.metrics = metrics or WorkerMetrics()
        self.store = store
        self.rules = rules
        self.latency_budget_ms = latency_budget_ms
        self.retry_after_s = retry_after_s
        self.max_message_bytes = max_message_bytes
        self._store_down_until = 0.0
        self.metrics.latency_budget_seconds.set(latency_budget_ms / 1000.0)
        self.set_model(model)

    def set_model(self, model: OnnxModel) -> None:
        self.model = model
        self.metrics.set_model(
            model.name, model.version, model.threshold, float(model.card.get("expected_alert_rate", 0.0))
        )

    # ---- one batch -----------------------------------------------------------------------------------------
    def process(self, messages: Sequence[RawMessage], received_s: float | None = None) -> BatchOutcome:
        """Decide every valid message of the batch; every invalid one becomes a dead letter."""
        started = time.perf_counter()
        received_s = time.time() if received_s is None else received_s
        metrics = self.metrics
        metrics.input_messages.inc(len(messages))
        outcome = BatchOutcome()
        events: list[Event] = []
        for message in messages:
            try:
                events.append(parse_event(message.value, self.max_message_bytes))
            except InvalidEvent as exc:
                letter = build_dead_letter(
                    str(exc), message.value, message.topic, message.partition, message.offset, received_s * 1000
                )
                outcome.dead_letters.append((message.key, letter))
        if outcome.dead_letters:
            metrics.events.labels("dead_letter").inc(len(outcome.dead_letters))
        outcome.events = events
        if not events:
            return outcome

        model, rules = self.model, self.rules
        skipped: list[str] = []
        scores, errors = self._score(model, events, skipped)
        states = self._observe(rules, events, skipped)

        flags = 0
        model_flags = 0
        decided_at = format_timestamp(time.time() * 1000)
        latency_ms = (time.perf_counter() - started) * 1000.0
        threshold = model.threshold
        explanations = model.top_features(errors) if scores is not None else None
        score_list = scores.tolist() if scores is not None else None
        rule_hits = metrics.rule_hits
        for i, event in enumerate(events):
            hits = evaluate(rules, event, None if states is None else states[i])
            flagging = flagging_rules(rules, hits)
            model_part = None
            model_flag = False
            if score_list is not None:
                score = score_list[i]
                model_flag = score > threshold
                model_part = {
                    "version": model.version,
                    "score": round(score, 6),
                    "threshold": threshold,
                    "top_features": [{"name": name, "error": round(err, 6)} for name, err in explanations[i]],
                }
            flag = model_flag or bool(flagging)
            flags += flag
            model_flags += model_flag
            for hit in hits:
                rule_hits.labels(hit.id).inc()
            outcome.decisions.append(
                build_decision(
                    event, flag=flag, model_part=model_part, model_flag=model_flag, hits=hits,
                    flagging_rules=flagging, skipped=skipped, decided_at=decided_at, latency_ms=latency_ms,
                )
            )

        n = len(events)
        metrics.events.labels("scored").inc(n)
        metrics.decisions.labels("flag").inc(flags)
        metrics.decisions.labels("pass").inc(n - flags)
        metrics.model_flags.inc(model_flags)
        if score_list is not None:
            observe_score = metrics.model_score.observe
            for score in score_list:
                observe_score(score)
        for cause in skipped:
            metrics.degraded.labels(_DEGRADED_CAUSE[cause]).inc(n)
        elapsed_s = time.perf_counter() - started
        observe_processing = metrics.processing_seconds.observe
        for _ in range(n):  # every event of the batch spent the batch's time in the worker
            observe_processing(elapsed_s)
        if elapsed_s * 1000.0 > self.latency_budget_ms:
            metrics.budget_exceeded.inc(n)
        return outcome

    def _score(
        self, model: OnnxModel, events: list[Event], skipped: list[str]
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        try:
            started = time.perf_counter()
            scores, errors = model.score(vectorize(events, model.feature_names))
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            return scores, errors
        except Exception:  # the model must never stop the stream: decide from the rules alone
            log.exception("model scoring failed for a batch of %d events; deciding from rules only", len(events))
            skipped.append("model")
            return None, None

    def _observe(self, rules: RuleSet, events: list[Event], skipped: list[str]) -> list | None:
        if not rules.stateful:
            return [None] * len(events)
        if time.monotonic() < self._store_down_until:
            skipped.append("redis_state")
            return None
        try:
            states = self.store.observe(rules, events)
        except StateUnavailable as exc:
            if self._store_down_until == 0.0:
                log.warning("rule state unavailable, deciding without stateful rules: %s", exc)
            self._store_down_until = time.monotonic() + self.retry_after_s
            skipped.append("redis_state")
            return None
        if self._store_down_until:
            log.info("rule state is back; stateful rules run again")
            self._store_down_until = 0.0
        return states

_DEGRADED_CAUSE = {"redis_state": "redis_unavailable", "model": "model_error"}
