"""Offline replay (backtest): a file of events through the same engine the worker runs, with in-process state."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from fraudmon.core import rates
from fraudmon.core.config import Settings
from fraudmon.core.errors import ModelError
from fraudmon.core.eventfiles import json_lines
from fraudmon.core.events import Event, event_to_dict
from stream_app.engine import DecisionEngine, RawMessage
from stream_app.fit import events_problem, missing_features_problem, scores_problem
from stream_app.rules import NO_LISTS, RuleSet
from stream_app.runtime import build_engine, event_limits
from stream_app.state import InMemoryStateStore


@dataclass
class ReplayResult:
    decisions: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)
    misfits: list[str] = field(default_factory=list)  # why the model does not fit the events (`stream_app.fit`)

    def confusion(self, labels: dict[str, int]) -> dict[str, int]:
        """Confusion matrix against ground truth (`transaction_id -> label`), over decided events."""
        counts = Counter()
        for decision in self.decisions:
            label = labels.get(decision["transaction_id"])
            if label is None:
                continue
            flagged = decision["decision"] == "flag"
            counts["tp" if flagged and label else "fp" if flagged else "fn" if label else "tn"] += 1
        return {key: counts[key] for key in ("tp", "fp", "fn", "tn")}


def recall_by_scenario(decisions: Iterable[dict], truth: dict[str, tuple[int, str]]) -> dict[str, dict]:
    """Per fraud scenario: frauds, how many were flagged, and the recall (`truth`: tx id -> (label, scenario))."""
    decided = {d["transaction_id"]: d["decision"] for d in decisions}
    table: dict[str, dict] = {}
    for tx_id, (label, scenario) in truth.items():
        if label == 1:
            entry = table.setdefault(scenario, {"frauds": 0, "flagged": 0})
            entry["frauds"] += 1
            entry["flagged"] += decided.get(tx_id) == "flag"
    return {name: {**e, "recall": rates.recall(e["flagged"], e["frauds"])} for name, e in sorted(table.items())}


@dataclass
class RulePerformance:
    """One rule's (or the model's) backtest: its hits, and the frauds among them (ground truth)."""

    rule: str
    action: str
    mode: str  # live, shadow, or model
    hits: int = 0
    labelled_hits: int = 0
    frauds: int = 0
    only_catches: int = 0  # frauds that no other live rule nor the model caught

    def precision(self) -> float | None:
        return rates.precision(self.frauds, self.labelled_hits)


def rule_performance(decisions: Iterable[dict], labels: dict[str, int]) -> list[RulePerformance]:
    """Per rule and action (and the model's band): hits, precision, recall inputs and the frauds only it caught,
    over decisions and ground truth (`transaction_id -> label`). Shadow rules are judged as if they acted."""
    table: dict[tuple[str, str, str], RulePerformance] = {}
    for decision in decisions:
        label = labels.get(decision["transaction_id"])
        fired = [(hit["id"], hit["action"], "live") for hit in decision["rules"]]
        if "model" in decision["reasons"]:
            fired.append(("model", decision["action"], "model"))
        acting = {rule for rule, action, _ in fired if action != "allow"}
        fired += [(hit["id"], hit["action"], "shadow") for hit in decision["shadow_rules"]]
        for rule, action, mode in fired:
            entry = table.setdefault((rule, action, mode), RulePerformance(rule, action, mode))
            entry.hits += 1
            if label is not None:
                entry.labelled_hits += 1
                entry.frauds += label
                entry.only_catches += bool(label) and mode != "shadow" and acting == {rule}
    return sorted(table.values(), key=lambda e: (e.mode == "shadow", e.rule != "model", e.rule, e.action))


def action_counts(decisions: Iterable[dict], labels: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per action: decisions, and the frauds among them."""
    counts: dict[str, list[int]] = {action: [0, 0] for action in ("allow", "review", "block")}
    for decision in decisions:
        entry = counts[decision["action"]]
        entry[0] += 1
        entry[1] += labels.get(decision["transaction_id"], 0)
    return {action: (n, frauds) for action, (n, frauds) in counts.items()}


def flags_by_reason(decisions: Iterable[dict]) -> dict[str, int]:
    """How often each reason (`model`, a rule id) appears among flagged decisions, most frequent first."""
    return dict(Counter(r for d in decisions if d["decision"] == "flag" for r in d["reasons"]).most_common())


def raw_messages(path: Path, events: Iterable[Event] | None = None) -> Iterator[RawMessage]:
    """JSON lines are replayed as the raw bytes a producer would send (bad lines become dead letters);
    other formats arrive already read (`fraudmon.core.eventfiles`) and are sent as their JSON form."""
    if events is None:
        for number, line in json_lines(path):
            yield RawMessage(line, None, str(path), 0, number)
        return
    for number, event in enumerate(events, start=1):
        yield RawMessage(json.dumps(event_to_dict(event)).encode(), event.account_id.encode(), str(path), 0, number)


def replay(
    messages: Iterable[RawMessage], engine: DecisionEngine, batch_size: int = 500
) -> ReplayResult:
    """Decide every message in order, batch by batch, exactly as the worker does. Raises `ModelError` after the
    first batch when most of its events lack the features the model needs (it cannot score them); a model that
    scores them but does not fit them (its first batch's fields, or its alert rate over the whole replay, see
    `stream_app.fit`) is named in `misfits`, and its decisions are kept."""
    result = ReplayResult()
    batch: list[RawMessage] = []

    def flush() -> None:
        outcome = engine.process(batch)
        if not result.decisions:
            problem = missing_features_problem(engine.model, outcome.events)
            if problem:
                raise ModelError(problem)
            problem = events_problem(engine.model, outcome.events)
            if problem:
                result.misfits.append(problem)
        result.decisions.extend(outcome.decisions)
        result.dead_letters.extend(letter for _, letter in outcome.dead_letters)
        batch.clear()

    for message in messages:
        batch.append(message)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    problem = scores_problem(engine.model, [d["model"]["score"] for d in result.decisions if d["model"] is not None])
    if problem:
        result.misfits.append(problem)
    return result


def offline_engine(settings: Settings, rules: RuleSet | None = None,
                   lists: Mapping[str, Container[str]] = NO_LISTS) -> DecisionEngine:
    """The worker's engine with in-process rule state instead of Redis, and no bound on how far a recorded or
    simulated event's time may lie ahead of now; `rules` instead of the configured rules file, `lists` as the
    named lists' entries."""
    limits = replace(event_limits(settings), max_future_ms=None)
    engine = build_engine(settings, store=InMemoryStateStore(settings.redis.dedupe_ttl_s), limits=limits, rules=rules)
    engine.lists = lambda: lists
    return engine
