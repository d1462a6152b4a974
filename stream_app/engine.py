"""The decision engine: raw messages in, decisions and dead letters out, one batch at a time.

Plain synchronous code shared by the Faust worker and by offline replay. Per batch: one onnxruntime call and
one state-store round trip. `process` never raises: every message ends as exactly one decision or one dead
letter. A failure that is not the message's fault is isolated by splitting the batch until the one record that
fails is found; that record becomes a dead letter whose `error` names the exception.

Degraded decisions say why in `reasons` (`skipped:<cause>`) and in `fraud_degraded_total{cause}`:
`redis_unavailable` (the store is down: it refused or dropped the connection, or gave no answer within its
patience, `redis.unavailable_after_s`; stateless rules only, and the store is tried again after `retry_after_s`),
`state_error` (the store answered but could not judge this event) and `model_error` (no model score). A store
that is only busy is waited for: the batch is decided late, never without its state, and the consumer falls
behind meanwhile. Events decided while the store was unavailable are kept in a bounded backlog and recorded
when it is back. The latency budget decides nothing: it is what `fraud_latency_budget_exceeded_total` counts
against, and it paces the recording of that backlog.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from fraudmon.core.errors import InvalidEvent, StateUnavailable
from fraudmon.core.events import DEFAULT_LIMITS, Event, EventLimits, format_timestamp, parse_event
from stream_app.decision import build_dead_letter, build_decision
from stream_app.drift import FeatureDrift
from stream_app.features import vectorize
from stream_app.fit import events_problem, passthrough_features, scores_problem
from stream_app.metrics import WorkerMetrics
from stream_app.rules import NO_LISTS, RuleSet, decide, judge, model_action
from stream_app.scoring import OnnxModel, Prediction
from stream_app.state import PendingState, StateFailure, StateStore

log = logging.getLogger(__name__)

REDIS_UNAVAILABLE, STATE_ERROR, MODEL_ERROR = "redis_unavailable", "state_error", "model_error"
BACKLOG_CHUNK = 1000  # at most this many backlog events recorded per batch once the store is back
BACKLOG_FIRST_CHUNK = 250  # the first chunk; it doubles while recording one takes under 1/8 of the latency budget
# and halves over 1/4 of it or when the store failed meanwhile (a chunk of 1,000 takes about 19 ms of the local
# Redis and more under load: a batch that follows an outage is not made later than the budget by much)
RECENT_EVENTS = 200  # kept to check a new model against before it replaces the served one


def _predict(model: OnnxModel, events: list[Event]) -> tuple[list[int], np.ndarray, Prediction]:
    """Score the events that carry the model's precomputed features: their rows, feature matrix and prediction."""
    needed = passthrough_features(model)
    rows = [i for i, e in enumerate(events) if all(name in e.features for name in needed)] if needed \
        else list(range(len(events)))
    x = vectorize(events if len(rows) == len(events) else [events[i] for i in rows], model.feature_names)
    return rows, x, model.predict(x)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed record, with where it came from (for the dead letter)."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


def _shown_score(score: float) -> float:
    """A score as decisions publish it: six significant digits, not decimals (six decimals printed a 0.00044312
    score as 0.000443, on the wrong side of a 0.00044284 threshold)."""
    return float(f"{score:.6g}")


class _Scored(NamedTuple):
    is_outlier: bool
    risk_score: float | None
    part: dict[str, Any]  # the decision's `model`: version, score, threshold and explanation


@dataclass
class BatchOutcome:
    events: list[Event] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)

    def extend(self, other: BatchOutcome) -> BatchOutcome:
        self.events += other.events
        self.decisions += other.decisions
        self.dead_letters += other.dead_letters
        return self


@dataclass(slots=True)
class StartedBatch:
    """A batch between `DecisionEngine.start` and `finish`: what `start` parsed and sent, or the error it met."""

    messages: Sequence[RawMessage]
    received_s: float
    started: float  # perf_counter() at `start`: the decisions' latency counts from there
    model: OnnxModel
    rules: RuleSet
    outcome: BatchOutcome | None = None
    observed: _Observed | None = None
    error: Exception | None = None


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
        limits: EventLimits = DEFAULT_LIMITS,
        max_state_backlog: int = 100_000,
        shadow: OnnxModel | None = None,
        drift_window: int = 5_000,
        lists: Callable[[], Mapping[str, Container[str]]] = lambda: NO_LISTS,
    ) -> None:
        self.metrics = metrics or WorkerMetrics()
        self.store = store
        self.rules = rules  # (a property: declares the rules' series on the metrics)
        self.lists = lists  # the current entries of the named lists, asked once per batch
        self.latency_budget_ms = latency_budget_ms
        self.retry_after_s = retry_after_s
        self.limits = limits
        self.max_state_backlog = max_state_backlog
        self._store_down_until = 0.0  # monotonic time until which the store is not asked (0: it is up)
        self._backlog: deque[Event] = deque()
        self._backlog_chunk = BACKLOG_FIRST_CHUNK
        self._recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self.drift_window = drift_window
        self.set_shadow(shadow)
        self.metrics.latency_budget_seconds.set(latency_budget_ms / 1000.0)
        self.set_model(model)

    @property
    def rules(self) -> RuleSet:
        return self._rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        self._rules = rules
        self.metrics.declare_rules(rules)

    def set_model(self, model: OnnxModel) -> None:
        self.model = model
        self.drift = FeatureDrift(model.card, self.drift_window)
        self.metrics.set_model(
            model.name, model.version, model.threshold, model.card.expected_alert_rate
        )

    def set_shadow(self, model: OnnxModel | None) -> None:
        """Score `model` next to the served one on every batch (None: no shadow); it never changes a decision.
        Once it has met `RECENT_EVENTS` events, a shadow that does not fit them is dropped (`_check_shadow`)."""
        self.shadow = model
        self._shadow_scores: list[float] = []  # its scores (NaN: not scored) until it is checked
        self.metrics.shadow_info.clear()
        if model is not None:
            self.metrics.shadow_info.labels(version=model.version, name=model.name).set(1)

    def warm_up(self) -> None:
        """Run the model (served and shadow) on a made-up event before the first batch, so that the first real
        events do not pay for onnxruntime's first-call allocations. Writes nothing to the state store."""
        event = Event("warm-up", "warm-up", 1.0, int(time.time() * 1000),
                      features=dict.fromkeys(passthrough_features(self.model), 0.0))
        self._score(self.model, [event] * 8, drift=False)
        self._shadow([event] * 8)

    def fit_problem(self, model: OnnxModel) -> str | None:
        """Why `model` would not fit the events this engine saw last, or None (`stream_app.fit.events_problem`)."""
        return events_problem(model, list(self._recent))

    def export_drift(self) -> None:
        """Set `fraud_feature_psi` from the drift window (the worker does it on a timer, not per batch)."""
        for feature, value in self.drift.psi().items():
            self.metrics.feature_psi.labels(feature).set(value)

    @property
    def state_backlog(self) -> int:
        """Events decided while the store was unavailable and not yet recorded in it."""
        return len(self._backlog)

    # ---- one batch -----------------------------------------------------------------------------------------
    def process(self, messages: Sequence[RawMessage], received_s: float | None = None) -> BatchOutcome:
        """Decide every valid message of the batch; every other one becomes a dead letter. Never raises."""
        return self.finish(self.start(messages, received_s))

    def start(self, messages: Sequence[RawMessage], received_s: float | None = None) -> StartedBatch:
        """The first half of `process`: parse the batch and send its rule-state script, which the store runs after
        the scripts sent before it while the caller does other work (`finish` decides). Never raises."""
        received_s = time.time() if received_s is None else received_s
        batch = StartedBatch(messages, received_s, time.perf_counter(), self.model, self.rules)
        try:
            batch.outcome = self._parse(messages, received_s)
            self._recent.extend(batch.outcome.events)
            if batch.outcome.events:
                batch.observed = self._observe_start(batch.rules, batch.outcome.events)
        except Exception as exc:  # `finish` isolates it
            batch.error = exc
        return batch

    def finish(self, batch: StartedBatch) -> BatchOutcome:
        """The decisions and dead letters of a batch from `start` (batches are finished in the order started).
        Never raises: a failure that is not the messages' fault is isolated by deciding the halves again."""
        messages, received_s = batch.messages, batch.received_s
        try:
            if batch.error is not None:
                raise batch.error
            return self._finish(batch)
        except Exception as exc:  # not the messages' fault as far as validation can tell: isolate it
            if len(messages) > 1:
                middle = len(messages) // 2
                return self.process(messages[:middle], received_s).extend(self.process(messages[middle:], received_s))
            log.exception("internal error deciding %s[%d]@%d; dead-lettered", *_where(messages[0]))
            return self._internal_dead_letter(messages[0], exc, received_s)

    def _internal_dead_letter(self, message: RawMessage, exc: Exception, received_s: float) -> BatchOutcome:
        error = f"internal: {exc.__class__.__name__}: {str(exc)[:200]}"
        letter = build_dead_letter(error, message.value, message.topic, message.partition, message.offset,
                                   received_s * 1000)
        self.metrics.input_messages.inc()
        self.metrics.events.labels("dead_letter").inc()
        self.metrics.internal_errors.inc()
        return BatchOutcome(dead_letters=[(message.key, letter)])

    def _finish(self, batch: StartedBatch) -> BatchOutcome:
        outcome, observed, events = batch.outcome, batch.observed, batch.outcome.events
        if observed is not None:
            try:  # all that does not need the rule state, done while the script runs
                scored = self._score(batch.model, events)
                shadows = self._shadow(events)
                event_times = [event.event_time for event in events]
            except BaseException:
                observed.cancel()
                raise
            states, state_causes = observed.result()
            outcome.decisions = self._decide(batch.rules, events, event_times, scored, shadows, states,
                                             state_causes, batch.started)
            self._check_shadow(shadows)
        self._record_metrics(len(batch.messages), outcome, time.perf_counter() - batch.started)
        return outcome

    def _parse(self, messages: Sequence[RawMessage], received_s: float) -> BatchOutcome:
        """Valid events, and a dead letter naming the field for every other message."""
        outcome = BatchOutcome()
        now_ms = int(received_s * 1000)
        for message in messages:
            try:
                outcome.events.append(parse_event(message.value, self.limits, now_ms))
            except InvalidEvent as exc:
                letter = build_dead_letter(str(exc), message.value, message.topic, message.partition,
                                           message.offset, received_s * 1000)
                outcome.dead_letters.append((message.key, letter))
        return outcome

    def _score(self, model: OnnxModel, events: list[Event], drift: bool = True) -> list[_Scored | None]:
        """Per event: the model's verdict, or None when it could not score that event (`model_error`)."""
        scored: list[_Scored | None] = [None] * len(events)
        try:
            started = time.perf_counter()
            rows, x, prediction = _predict(model, events)
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            top = model.top_fields(prediction.feature_score)
        except Exception as exc:  # the model must never stop the stream: decide from the rules alone
            log.error("model %s could not score a batch of %d events (deciding from rules only): %s: %s",
                      model.name, len(events), exc.__class__.__name__, exc, extra={"dependency": "model"})
            return scored
        if drift:
            self.drift.observe(x)
        explained = model.explain(events if len(rows) == len(events) else [events[i] for i in rows], top)
        version, threshold = model.version, model.threshold
        risks = model.risk_scores(prediction.instance_score)
        risks = [None] * len(rows) if risks is None else risks.tolist()
        for row, outlier, score, risk, driver, explanation in zip(
                rows, prediction.is_outlier.tolist(), prediction.instance_score.tolist(), risks,
                prediction.drivers(), explained, strict=True):
            if math.isfinite(score):
                scored[row] = _Scored(bool(outlier), risk, {"version": version, "score": _shown_score(score),
                                                            "threshold": threshold, "driver": driver,
                                                            "top_features": explanation})
        return scored

    def _shadow(self, events: list[Event]) -> list[dict | None]:
        """The shadow model's score and flag per event (None where it could not score); never raises."""
        shadow, parts = self.shadow, [None] * len(events)
        if shadow is None:
            return parts
        try:
            rows, _, prediction = _predict(shadow, events)
        except Exception as exc:  # a broken shadow never degrades the served decisions
            log.error("shadow model %s could not score a batch: %s: %s", shadow.name, exc.__class__.__name__, exc,
                      extra={"dependency": "shadow-model"})
            return parts
        for row, outlier, score in zip(rows, prediction.is_outlier.tolist(), prediction.instance_score.tolist(),
                                       strict=True):
            if math.isfinite(score):
                parts[row] = {"version": shadow.version, "score": _shown_score(score), "threshold": shadow.threshold,
                              "flag": bool(outlier)}
        return parts

    def _check_shadow(self, shadows: list[dict | None]) -> None:
        """Once the shadow has scored (or failed to score) `RECENT_EVENTS` events, stop scoring it when it does not
        fit them (`stream_app.fit`): its flags and disagreements would read as agreement, or as noise. Logged as
        an error and counted as a refused shadow reload."""
        if self.shadow is None or len(self._shadow_scores) >= RECENT_EVENTS:
            return
        self._shadow_scores += [math.nan if part is None else part["score"] for part in shadows]
        if len(self._shadow_scores) < RECENT_EVENTS:
            return
        shadow = self.shadow
        try:
            problem = events_problem(shadow, list(self._recent)) or scores_problem(shadow, self._shadow_scores)
        except Exception:  # judging the shadow must never fail a batch whose decisions are made
            log.exception("shadow model %s could not be checked against the traffic; still scored", shadow.name)
            return
        if problem:
            log.error("shadow model %s (%s) refused, no longer scored: %s", shadow.name, shadow.version, problem,
                      extra={"dependency": "shadow-model"})
            self.metrics.reloads.labels(artifact="shadow", result="refused").inc()
            self.set_shadow(None)

    def _decide(self, rules: RuleSet, events: list[Event], event_times: list[str], scored: list[_Scored | None],
                shadows: list[dict | None], states: list[tuple | None], state_causes: list[str | None],
                started: float) -> list[dict]:
        decided_at = format_timestamp(time.time() * 1000)
        latency_ms = (time.perf_counter() - started) * 1000.0
        current = self.lists()
        lists = {name: current.get(name, ()) for name in rules.lists or ()}
        bands, precedence = rules.bands, rules.precedence
        decisions = []
        for event, event_time, verdict, shadow, state, state_cause in zip(events, event_times, scored, shadows,
                                                                          states, state_causes, strict=True):
            risk = None if verdict is None else verdict.risk_score
            judgement = judge(rules, event, state, risk, lists)
            asked = None if verdict is None else model_action(bands, verdict.is_outlier, risk)
            action, reasons = decide(asked, judgement.hits, precedence)
            skipped = [cause for cause in (state_cause, None if verdict else MODEL_ERROR) if cause]
            decisions.append(build_decision(
                event, event_time=event_time, action=action, reasons=reasons,
                model_part=None if verdict is None else verdict.part, risk_score=risk, hits=judgement.hits,
                shadow_hits=judgement.shadow_hits, rule_errors=judgement.errors, skipped=skipped,
                decided_at=decided_at, latency_ms=latency_ms, shadow=shadow,
            ))
        self.metrics.model_flags.inc(sum(verdict is not None and verdict.is_outlier for verdict in scored))
        self._remember(decisions)
        return decisions

    def _remember(self, decisions: list[dict]) -> None:
        """Keep each decision for the verdict window (best effort: a Redis failure only loses verdict counts)."""
        if self._store_down_until:
            return
        try:
            self.store.remember([(d["transaction_id"], remembered(d)) for d in decisions])
        except Exception as exc:  # verdict bookkeeping must never cost a decision
            log.warning("decisions not kept for verdicts: %s: %s", exc.__class__.__name__, exc,
                        extra={"dependency": "redis"})

    def _observe_start(self, rules: RuleSet, events: list[Event]) -> _Observed:
        """Per event, once `result()` is read: the state before it (None: stateless rules only) and the cause when
        it is missing. The store's call is sent now and its answer read by `result()` (when the store can)."""
        n = len(events)
        if not rules.stateful:
            return _Observed(([None] * n, [None] * n))
        if time.monotonic() < self._store_down_until:
            return _Observed(self._store_unavailable(events))
        try:
            self._record_backlog(rules)
            pending = self.store.observe_later(rules.aggregates, events)
        except StateUnavailable as exc:
            return _Observed(self._unavailable(events, exc))
        return _Observed(pending=pending, answer=lambda: self._answered(events, pending))

    def _answered(self, events: list[Event], pending: PendingState) -> tuple[list[tuple | None], list[str | None]]:
        try:
            results = pending.result()
        except StateUnavailable as exc:
            return self._unavailable(events, exc)
        return self._observed(events, results)

    def _unavailable(self, events: list[Event], exc: StateUnavailable) -> tuple[list[None], list[str]]:
        if self._store_down_until == 0.0:
            log.warning("rule state unavailable, deciding without stateful rules: %s", exc,
                        extra={"dependency": "redis"})
        self._store_down_until = time.monotonic() + self.retry_after_s  # a store that is down: one call a wait
        return self._store_unavailable(events)

    def _observed(self, events: list[Event], results: list) -> tuple[list[tuple | None], list[str | None]]:
        if self._store_down_until:
            log.info("rule state is back; stateful rules run again (%d events to record)", len(self._backlog))
            self._store_down_until = 0.0
        states: list[tuple | None] = []
        causes: list[str | None] = []
        for event, result in zip(events, results, strict=True):
            if isinstance(result, StateFailure):
                log.error("rule state of account %r could not be judged: %s", event.account_id, result.reason,
                          extra={"dependency": "redis-state"})
                states.append(None)
                causes.append(STATE_ERROR)
            else:
                states.append(result)
                causes.append(None)
        return states, causes

    def _store_unavailable(self, events: list[Event]) -> tuple[list[None], list[str]]:
        room = self.max_state_backlog - len(self._backlog)
        self._backlog.extend(events[:max(0, room)])
        if len(events) > room:
            self.metrics.state_unrecorded.inc(len(events) - max(0, room))
        return [None] * len(events), [REDIS_UNAVAILABLE] * len(events)

    def _record_backlog(self, rules: RuleSet) -> None:
        """Record (idempotently) up to one chunk of the events decided while the store was unavailable."""
        if not self._backlog:
            return
        chunk = [self._backlog.popleft() for _ in range(min(self._backlog_chunk, len(self._backlog)))]
        started = time.perf_counter()
        try:
            self.store.observe(rules.aggregates, chunk)
        except StateUnavailable:
            self._backlog.extendleft(reversed(chunk))
            self._backlog_chunk = max(1, len(chunk) // 2)  # the chunk's own size may have made it time out
            raise
        took_ms = (time.perf_counter() - started) * 1000.0
        if took_ms < self.latency_budget_ms / 8:
            self._backlog_chunk = min(BACKLOG_CHUNK, self._backlog_chunk * 2)
        elif took_ms > self.latency_budget_ms / 4:
            self._backlog_chunk = max(1, self._backlog_chunk // 2)

    def _record_metrics(self, consumed: int, outcome: BatchOutcome, elapsed_s: float) -> None:
        metrics = self.metrics
        metrics.input_messages.inc(consumed)
        if outcome.dead_letters:
            metrics.events.labels("dead_letter").inc(len(outcome.dead_letters))
        metrics.state_backlog.set(len(self._backlog))
        n = len(outcome.decisions)
        if not n:
            return
        observe_score = metrics.model_score.observe
        actions: dict[str, int] = {}
        hits: dict[tuple[str, str, bool], int] = {}  # (rule, action, shadow) -> hits
        problems: dict[str, int] = {}  # skipped:<cause> and rule_error:<rule> -> decisions
        for decision in outcome.decisions:
            actions[decision["action"]] = actions.get(decision["action"], 0) + 1
            if decision["model"] is not None:
                observe_score(decision["model"]["score"])
            for hit in decision["rules"]:
                key = (hit["id"], hit["action"], False)
                hits[key] = hits.get(key, 0) + 1
            for hit in decision["shadow_rules"]:
                key = (hit["id"], hit["action"], True)
                hits[key] = hits.get(key, 0) + 1
            for reason in decision["reasons"]:
                if reason.startswith(("skipped:", "rule_error:")):
                    problems[reason] = problems.get(reason, 0) + 1
        metrics.events.labels("scored").inc(n)
        for action, count in actions.items():
            metrics.decisions.labels("pass" if action == "allow" else "flag", action).inc(count)
        for (rule, action, shadow), count in hits.items():
            (metrics.shadow_rule_hits if shadow else metrics.rule_hits).labels(rule, action).inc(count)
        shadow_flags = shadow_only = served_only = 0
        for decision in outcome.decisions:
            shadow = decision.get("shadow")
            if shadow is not None:
                served = "model" in decision["reasons"]
                shadow_flags += shadow["flag"]
                shadow_only += shadow["flag"] and not served
                served_only += served and not shadow["flag"]
        if shadow_flags or shadow_only or served_only:
            metrics.shadow_flags.inc(shadow_flags)
            metrics.shadow_disagreements.labels("shadow_only").inc(shadow_only)
            metrics.shadow_disagreements.labels("served_only").inc(served_only)
        for problem, count in problems.items():
            kind, _, name = problem.partition(":")
            (metrics.degraded if kind == "skipped" else metrics.rule_errors).labels(name).inc(count)
        observe_processing = metrics.processing_seconds.observe
        for _ in range(n):  # every event of the batch spent the batch's time in the worker
            observe_processing(elapsed_s)
        if elapsed_s * 1000.0 > self.latency_budget_ms:
            metrics.budget_exceeded.inc(n)


class _Observed:
    """The states of a batch: known already (`value`), or read from the store by `result()` (`pending` is the
    store's call in flight, which `cancel()` drops)."""

    def __init__(self, value: tuple | None = None, *, pending: PendingState | None = None,
                 answer: Callable[[], tuple] | None = None) -> None:
        self._value, self._pending, self._answer = value, pending, answer

    def result(self) -> tuple[list[tuple | None], list[str | None]]:
        return self._value if self._answer is None else self._answer()

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()


def remembered(decision: dict) -> str:
    """What the store keeps of a decision for the verdicts: `flag|rule,rule` (the live rules that fired)."""
    return f"{decision['decision']}|{','.join(hit['id'] for hit in decision['rules'])}"


def _where(message: RawMessage) -> tuple[str, int, int]:
    return message.topic, message.partition, message.offset
