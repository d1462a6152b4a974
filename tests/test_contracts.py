"""The contracts users read (docs/contracts.md, schemas/) held against the code: the JSON Schemas and their
examples, the event gate, the engine's decisions (on the examples and on a replay of simulated events), the rules
file's schema against the rules parser, list entries against `fraudmon lists`, dead letters, a live worker, and the
metric names.

`python -m tests.test_contracts` rewrites schemas/examples/decisions.jsonl from the engine (see
`example_decisions`); `test_decision_examples_are_what_the_engine_decides` fails when it is stale.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from jsonschema import Draft202012Validator
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import fraudmon.tools.lists as lists_tool
import stream_app.rules as rules_module
from fraudmon.core.config import Settings, load_settings
from fraudmon.core.errors import InvalidEvent, RulesError, StateUnavailable
from fraudmon.core.events import parse_event
from fraudmon.core.modelcard import SCORE_PERCENTILE_LEVELS, ScorePercentilesCard
from stream_app.aggregates import CEL_RESERVED, KINDS, NUMERIC_FIELDS, STRING_FIELDS
from stream_app.aggregates import KEYS as AGGREGATE_KEYS
from stream_app.engine import RawMessage
from stream_app.lists import ListEntry, ListsError, StaticLists, ensure_lists_topics, entry_from_dict, parse_record
from stream_app.metrics import WorkerMetrics
from stream_app.replay import offline_engine, raw_messages, replay
from stream_app.rules import ACTIONS, MODEL_RULE, RuleSet, load_rules
from stream_app.scoring import OnnxModel
from stream_app.state import Answered, StateFailure
from training.simulate import SimulationConfig, simulate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "schemas" / "examples"
RULES_FILE = ROOT / "config" / "rules.yaml"
DOC = (ROOT / "docs" / "contracts.md").read_text()
SCHEMAS = {name: json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
           for name in ("event", "decision", "dead_letter", "verdict", "list_entry", "rules")}
VALIDATORS = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}
FILE_NOW = datetime(2026, 11, 22, 10, 20, tzinfo=UTC)  # the examples are written as if it were this moment
FILE_NOW_MS = int(FILE_NOW.timestamp() * 1000)


def _lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / name).read_text().splitlines()]


def _recent(event: dict, now: datetime) -> dict:
    """The example moved from FILE_NOW to `now`, its timestamp in the same form (epoch ms or ISO, same zone)."""
    value, shift = event["timestamp"], now - FILE_NOW
    if isinstance(value, int | float):
        moved = value + round(shift.total_seconds() * 1000)
    else:
        text = (datetime.fromisoformat(value) + shift).isoformat(timespec="milliseconds")
        moved = text[:-6] + "Z" if value.endswith("Z") else text
    return {**event, "timestamp": moved}


VALID = _lines("events-valid.jsonl")
INVALID = _lines("events-invalid.jsonl")
LIST_ENTRIES = _lines("list-entries.jsonl")
INVALID_LIST_ENTRIES = _lines("list-entries-invalid.jsonl")


def _valid_events() -> list[dict]:
    now = datetime.now(UTC)
    return [_recent(event, now) for event in VALID]


def _names(error: str, field: str) -> bool:
    """Whether a dead letter's `error` names `field` (`features.V1: ...` names `features`)."""
    return error.startswith((f"{field}:", f"{field}."))


def _blamed(error, instance) -> str:
    """The top-level field a schema error is about (`message` for the whole value)."""
    if error.absolute_path:
        return error.absolute_path[0]
    if error.validator == "required":
        return next(name for name in error.validator_value if name not in instance)
    return "message"


def _raw(event) -> RawMessage:
    return RawMessage(json.dumps(event).encode(), b"acc", "transactions", 0, 0)


@pytest.fixture
def engine():
    return offline_engine(load_settings(environ={}))


# ---- the schemas and their examples --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_are_valid_draft_2020_12(name):
    assert SCHEMAS[name]["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMAS[name])


def test_unprintable_pattern_is_the_gates():
    """The characters an id must not hold are the assigned ones of U+0000..U+FFFF the gate calls unprintable."""
    shared = {json.dumps([SCHEMAS[name]["$defs"][key] for key in ("id", "unprintable")])
              for name in ("event", "decision", "verdict")}
    assert len(shared) == 1, "the schemas define ids alike"
    assert SCHEMAS["list_entry"]["$defs"]["unprintable"] == SCHEMAS["event"]["$defs"]["unprintable"]
    pattern = re.compile(SCHEMAS["event"]["$defs"]["unprintable"]["pattern"])
    wrong = [f"U+{code:04X}" for code in range(0x10000) if unicodedata.category(chr(code)) != "Cn"
             and bool(pattern.search(chr(code))) == chr(code).isprintable()]
    assert not wrong


@pytest.mark.parametrize("event", VALID, ids=[e["transaction_id"] for e in VALID])
def test_valid_examples_pass_the_schema_and_the_gate(event):
    event = _recent(event, datetime.now(UTC))
    VALIDATORS["event"].validate(event)
    assert parse_event(json.dumps(event).encode()).transaction_id == event["transaction_id"]


@pytest.mark.parametrize("sample", INVALID, ids=[f"{s['breaks']}-{s['case']}" for s in INVALID])
def test_invalid_examples_fail_the_schema_and_the_gate_on_their_field(sample):
    errors = list(VALIDATORS["event"].iter_errors(sample["event"]))
    assert errors and {_blamed(e, sample["event"]) for e in errors} == {sample["breaks"]}
    with pytest.raises(InvalidEvent) as refused:
        parse_event(json.dumps(sample["event"]).encode())
    assert _names(str(refused.value), sample["breaks"]), str(refused.value)


_BASE = json.dumps(VALID[1])
GAPS = {  # case: (the field the gate names, the message, what the schema's $comment says about it)
    "size": ("message", _BASE[:-1] + ', "pad": "' + "x" * 70_000 + '"}', "65,536 bytes"),
    "duplicate-key": ("amount", _BASE[:-1] + ', "amount": 13}', "duplicate keys"),
    "two-days-ahead": ("timestamp", json.dumps({**VALID[1], "timestamp": int((time.time() + 2 * 86400) * 1000)}),
                       "now + events.max_future_s"),
    "february-30": ("timestamp", json.dumps({**VALID[1], "timestamp": "2026-02-30T10:00:00Z"}), "a real date"),
    "code-with-fraction": ("merchant_category", json.dumps({**VALID[1], "merchant_category": 5411.0}), "5411.0"),
}


@pytest.mark.parametrize(("field", "raw", "comment"), GAPS.values(), ids=GAPS)
def test_what_the_schema_cannot_express_is_in_its_comment(field, raw, comment):
    """These pass the schema but not the gate; the schema's `$comment` says so."""
    assert comment in SCHEMAS["event"]["$comment"]
    VALIDATORS["event"].validate(json.loads(raw))
    with pytest.raises(InvalidEvent) as refused:
        parse_event(raw.encode())
    assert _names(str(refused.value), field), str(refused.value)


@pytest.mark.parametrize(("name", "schema"), [
    ("decisions.jsonl", "decision"), ("dead-letters.jsonl", "dead_letter"), ("verdicts.jsonl", "verdict"),
    ("list-entries.jsonl", "list_entry"),
])
def test_output_examples_match_their_schema(name, schema):
    for value in _lines(name):
        VALIDATORS[schema].validate(value)


# ---- the engine's decisions ----------------------------------------------------------------------------------
def check_decision(decision: dict, rules: RuleSet | None = None) -> None:
    """The decision passes the schema, and what the schema cannot say: the reasons come in their order (`model`,
    the ids that chose the action, `rule_error:<id>`, `skipped:<cause>`); every rule id in them is a live hit that
    asked for the decision's action, and every such hit is in them; no hit asked for an action that precedes the
    decision's in the precedence; and, given the rule set, hits, shadow hits and errors name its rules."""
    VALIDATORS["decision"].validate(decision)
    reasons, action = decision["reasons"], decision["action"]
    kinds = ["skipped" if r.startswith("skipped:") else "error" if r.startswith("rule_error:") else "chose"
             for r in reasons]
    assert kinds == sorted(kinds, key=["chose", "error", "skipped"].index), reasons
    chose = [r for r, kind in zip(reasons, kinds, strict=True) if kind == "chose"]
    asking = [hit["id"] for hit in decision["rules"] if hit["action"] == action]
    assert [r for r in chose if r != MODEL_RULE] == asking, (reasons, decision["rules"])
    assert bool(chose) == (action != "allow" or bool(asking)), reasons
    assert chose or not decision["rules"], "a live hit asks for an action, so something chose it"
    if rules is None:
        return
    live = {rule.id for rule in rules.rules if rule.mode == "live"}
    shadow = {rule.id for rule in rules.rules if rule.mode == "shadow"}
    assert {hit["id"] for hit in decision["rules"]} <= live
    assert {hit["id"] for hit in decision["shadow_rules"]} <= shadow
    assert {r.removeprefix("rule_error:") for r in reasons if r.startswith("rule_error:")} <= live | shadow
    if chose:
        earlier = rules.precedence[:rules.precedence.index(action)]
        assert not {hit["action"] for hit in decision["rules"]} & set(earlier), (action, decision["rules"])


def test_engine_decisions_match_the_schema(engine):
    events = _valid_events()
    outcome = engine.process([_raw(event) for event in events])
    assert not outcome.dead_letters and len(outcome.decisions) == len(events)
    for decision in outcome.decisions:
        check_decision(decision, engine.rules)
    by_tx = {d["transaction_id"]: d for d in outcome.decisions}
    assert by_tx["tx-0009"]["action"] == "allow" and by_tx["tx-0009"]["decision"] == "pass"
    assert by_tx["tx-0005"]["action"] == "review" and by_tx["tx-0005"]["reasons"][0] == "model"
    assert "amount_over_limit" in {hit["id"] for hit in by_tx["tx-0005"]["rules"]}


def test_decisions_other_than_allow_carry_context_and_explained_fields(engine):
    """A review or block repeats the event's context fields; each top feature names its field, raw value and
    normal range."""
    events = _valid_events()
    decisions = {d["transaction_id"]: d for d in engine.process([_raw(event) for event in events]).decisions}
    context = SCHEMAS["decision"]["properties"]["context"]["properties"]
    item_keys = set(SCHEMAS["decision"]["properties"]["model"]["anyOf"][0]["properties"]["top_features"]["items"]
                    ["properties"])
    for event in events:
        decision = decisions[event["transaction_id"]]
        VALIDATORS["decision"].validate(decision)
        assert all(set(item) == item_keys for item in decision["model"]["top_features"])
        if decision["action"] != "allow":
            assert set(decision["context"]) == {k for k in context if event.get(k) is not None}
        else:
            assert "context" not in decision
    allowed = {**decisions["tx-0005"], "action": "allow", "decision": "pass", "reasons": []}
    assert not VALIDATORS["decision"].is_valid(allowed), "context only on review and block"
    del allowed["context"]
    VALIDATORS["decision"].validate(allowed)
    assert not VALIDATORS["decision"].is_valid({**allowed, "decision": "flag"}), "flag = not allow"


@pytest.mark.parametrize(("change", "why"), [
    ({"action": "block", "decision": "flag", "reasons": ["rule_error:x"], "context": {}}, "a block names a chooser"),
    ({"reasons": ["skipped:disk_full"], "degraded": True}, "an unknown cause"),
    ({"reasons": ["skipped:redis_unavailable"]}, "skipped but not degraded"),
    ({"degraded": True}, "degraded without a skipped reason"),
    ({"reasons": ["a_rule", "model"]}, "model comes first"),
    ({"model": None, "reasons": ["skipped:model_error"], "degraded": True, "risk_score": 12.5}, "risk without model"),
    ({"risk_score": 100.5}, "risk score over 100"),
    ({"currency": "eur"}, "currency in upper case"),
    ({"rules": [{"id": "r", "action": "review", "detail": "", "severity": "high"}]}, "hits have no severity"),
    ({"shadow_rules": [{"id": "r", "action": "hold", "detail": ""}]}, "an unknown action"),
])
def test_the_decision_schema_refuses_inconsistent_decisions(change, why):
    allowed = _lines("decisions.jsonl")[0]
    assert allowed["action"] == "allow" and not allowed["reasons"]
    VALIDATORS["decision"].validate(allowed)
    assert not VALIDATORS["decision"].is_valid({**allowed, **change}), why


class _DownStore:
    def connect(self) -> None:
        pass

    def observe(self, aggregates, events):
        raise StateUnavailable("test: Redis does not answer")

    def observe_later(self, aggregates, events):
        return Answered(self.observe(aggregates, events))

    def remember(self, decisions):
        pass


class _CorruptStore(_DownStore):
    def observe(self, aggregates, events):
        return [StateFailure("test: corrupt key")] * len(events)


class _BuggyStore(_DownStore):
    def observe(self, aggregates, events):
        raise RuntimeError("test: a bug in the store")


class _BrokenModel(OnnxModel):
    def predict(self, x):
        raise RuntimeError("test: the model cannot score")


def _break(engine, cause: str) -> None:
    if cause == "model_error":
        engine.set_model(_BrokenModel(session=engine.model.session, card=engine.model.card, path=engine.model.path))
    else:
        engine.store = _DownStore() if cause == "redis_unavailable" else _CorruptStore()


@pytest.mark.parametrize("cause", ["redis_unavailable", "state_error", "model_error"])
def test_degraded_decisions_match_the_schema(engine, cause):
    _break(engine, cause)
    decisions = engine.process([_raw(event) for event in _valid_events()]).decisions
    assert decisions and all(d["degraded"] and f"skipped:{cause}" in d["reasons"] for d in decisions)
    assert any(d["action"] == "review" for d in decisions), "amount_over_limit reviews without state or model"
    for decision in decisions:
        check_decision(decision, engine.rules)


# A replay of simulated traffic through the shipped rules, with lists and two more rules, so that every shape of
# decision occurs: allow, review, block (lists), an allow list overriding a block or review, shadow hits, rule
# errors (a rule reading a feature the events lack), and, with a broken store or model, degraded decisions.
EXTRA_RULES = [
    {"id": "atm_v14_extreme", "when": 'event.channel == "atm" && event.features["V14"] < -10.0', "action": "review",
     "description": "fails on ATM withdrawals, which carry no V14 (rule_error)"},
    {"id": "big_ecommerce", "when": 'event.channel == "ecommerce" && event.amount > 300.0', "action": "block",
     "mode": "shadow", "description": "tried in shadow"},
]


def _rules_with(tmp_path: Path, extra: list[dict]) -> RuleSet:
    data = yaml.safe_load(RULES_FILE.read_text())
    data["rules"] += extra
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_rules(path)


def _entries(now_ms: int, **lists: list[str]) -> list[ListEntry]:
    return [ListEntry.new(name, value, reason="contract test", author="ana", now_ms=now_ms)
            for name, values in lists.items() for value in values]


def _with_risk_scores(engine) -> None:
    """Serve the engine's model with score percentiles on its card when the card has none (a model trained before
    they existed): a stand-in, log-interpolated from the card's score quantiles, so that risk scores occur."""
    card = engine.model.card
    if card.score_percentiles is not None:
        return
    q = card.score_quantiles
    known = [(0.0, q["p50"] / 100), (50.0, q["p50"]), (90.0, q["p90"]), (99.0, q["p99"]), (99.9, q["p999"]),
             (100.0, q["p999"] * 100)]
    levels = np.asarray(SCORE_PERCENTILE_LEVELS, dtype=np.float64)
    scores = np.exp(np.interp(levels, [k for k, _ in known], np.log([v for _, v in known])))
    percentiles = ScorePercentilesCard(levels=tuple(levels.tolist()), scores=tuple(scores.tolist()))
    model = engine.model
    engine.set_model(OnnxModel(session=model.session, card=card.model_copy(update={"score_percentiles": percentiles}),
                               path=model.path))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The decisions of a replay of 6,000 simulated events (2 days, 3% fraud) and the rule set they used."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events, truth = simulate(SimulationConfig(n_events=6000, n_accounts=300, start=start,
                                              duration=timedelta(days=2), fraud_rate=0.03, seed=11))
    frauds = [e for e, t in zip(events, truth, strict=True) if t.label]
    ips = [e.ip for e in events if e.ip][:: 400][:5]
    lists = StaticLists(_entries(int(start.timestamp() * 1000), blocked_ips=ips,
                                 trusted_accounts=sorted({e.account_id for e in frauds})[:3])).current()
    rules = _rules_with(tmp_path_factory.mktemp("contracts"), EXTRA_RULES)
    settings = load_settings(environ={})
    engine = offline_engine(settings, rules, lists)
    _with_risk_scores(engine)
    result = replay(raw_messages(Path("simulated.jsonl"), events), engine)
    assert not result.dead_letters and len(result.decisions) == len(events)
    degraded = []
    for cause in ("redis_unavailable", "model_error"):
        engine = offline_engine(settings, rules, lists)
        _with_risk_scores(engine)
        _break(engine, cause)
        degraded += replay(raw_messages(Path("simulated.jsonl"), events[:500]), engine).decisions
    return rules, result.decisions, degraded


def test_every_decision_of_a_simulated_replay_matches_the_schema(simulated):
    rules, decisions, degraded = simulated
    for decision in decisions + degraded:
        check_decision(decision, rules)
    assert {d["action"] for d in decisions} == set(ACTIONS)
    assert any(d["action"] == "allow" and d["reasons"] and any(h["action"] != "allow" for h in d["rules"])
               for d in decisions), "a trusted account's allow overrides a review or block"
    assert any(d["action"] == "block" and "blocked_ip" in d["reasons"] for d in decisions)
    assert any(d["shadow_rules"] for d in decisions) and any(d["rules"] for d in decisions)
    assert any("rule_error:atm_v14_extreme" in d["reasons"] for d in decisions)
    assert any(d["risk_score"] is not None for d in decisions)
    assert {r for d in degraded for r in d["reasons"] if r.startswith("skipped:")} == \
        {"skipped:redis_unavailable", "skipped:model_error"}
    assert all(d["risk_score"] is None for d in degraded if d["model"] is None)
    assert any(d["risk_score"] is not None for d in degraded)


# ---- the decision examples, made by the engine ---------------------------------------------------------------
EXAMPLE_RULES = [{"id": "v14_extreme", "when": 'size(event.features) > 0 && event.features["V14"] < -10.0',
                  "action": "review", "description": "V14 far below normal (fails on events with other features)"}]
EXAMPLE_HISTORY = [  # acc-60's habit: five payments in DE, before a payment from BR (new_country, a shadow rule)
    {"transaction_id": f"tx-0060-{i}", "account_id": "acc-60", "amount": 20.0 + i, "currency": "EUR",
     "timestamp": f"2026-11-22T09:{10 * i:02d}:00Z", "country": "DE", "channel": "card_present"} for i in range(5)]
EXAMPLE_EVENTS = {  # what each example shows: its event
    "allow": VALID[8],
    "review (two rules)": VALID[4],
    "block (a blocked IP)": {"transaction_id": "tx-0101", "account_id": "acc-51", "amount": 35.0, "currency": "EUR",
                             "timestamp": "2026-11-22T10:19:00.000Z", "merchant_id": "m-12",
                             "merchant_category": "5411", "country": "DE", "ip": "203.0.113.66",
                             "channel": "ecommerce"},
    "allow overriding a block (a trusted account)": {
        "transaction_id": "tx-0102", "account_id": "acc-trusted-7", "amount": 16500.0, "currency": "EUR",
        "timestamp": "2026-11-22T10:19:10.000Z", "country": "DE", "ip": "203.0.113.66", "channel": "transfer",
        "counterparty_id": "acc-88"},
    "a shadow rule's hit": {"transaction_id": "tx-0061", "account_id": "acc-60", "amount": 24.0, "currency": "EUR",
                            "timestamp": "2026-11-22T10:10:00Z", "country": "BR", "channel": "card_present"},
    "a rule error": VALID[0],
}
DEGRADED_EXAMPLES = {"redis_unavailable": VALID[7], "model_error": VALID[2]}


def example_decisions(tmp_path: Path) -> list[dict]:
    """schemas/examples/decisions.jsonl as the engine makes it today: the shipped rules plus `EXAMPLE_RULES`, the
    lists of list-entries.jsonl at FILE_NOW, the history, then one decision per `EXAMPLE_EVENTS` and one per
    degraded cause (`decided_at` set to 7 ms after the event's time)."""
    settings = load_settings(environ={})
    rules = _rules_with(tmp_path, EXAMPLE_RULES)
    lists = StaticLists.from_file(EXAMPLES / "list-entries.jsonl").current(FILE_NOW_MS)
    engine = offline_engine(settings, rules, lists)
    messages = [_raw(event) for event in EXAMPLE_HISTORY + list(EXAMPLE_EVENTS.values())]
    decided = {d["transaction_id"]: d for d in engine.process(messages).decisions}
    decisions = [decided[event["transaction_id"]] for event in EXAMPLE_EVENTS.values()]
    for cause, event in DEGRADED_EXAMPLES.items():
        engine = offline_engine(settings, rules, lists)
        _break(engine, cause)
        decisions += engine.process([_raw(event)]).decisions
    for decision in decisions:
        event_ms = datetime.fromisoformat(decision["event_time"]).timestamp() * 1000
        decision["decided_at"] = datetime.fromtimestamp((event_ms + 7) / 1000, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
    return decisions


def _stable(decision: dict) -> dict:
    """What of a decision does not depend on the model's training or the moment: the rules' part."""
    return {"transaction_id": decision["transaction_id"], "rules": decision["rules"],
            "shadow_rules": decision["shadow_rules"], "degraded": decision["degraded"],
            "reasons": [r for r in decision["reasons"] if r != MODEL_RULE], "context": decision.get("context")}


def test_decision_examples_are_what_the_engine_decides(tmp_path):
    """The shipped examples are the engine's (the model's part aside); `python -m tests.test_contracts` rewrites
    them. Between them they show every kind of decision."""
    shipped, made = _lines("decisions.jsonl"), example_decisions(tmp_path)
    assert [_stable(d) for d in shipped] == [_stable(d) for d in made]
    for decision in shipped:
        check_decision(decision)
    kinds = dict(zip(list(EXAMPLE_EVENTS) + list(DEGRADED_EXAMPLES), shipped, strict=True))
    assert kinds["allow"]["action"] == "allow" and not kinds["allow"]["reasons"]
    assert kinds["review (two rules)"]["action"] == "review"
    assert kinds["block (a blocked IP)"]["action"] == "block"
    override = kinds["allow overriding a block (a trusted account)"]
    assert override["action"] == "allow" and override["reasons"] == ["trusted_account"]
    assert {hit["action"] for hit in override["rules"]} >= {"allow", "block"}
    assert [hit["id"] for hit in kinds["a shadow rule's hit"]["shadow_rules"]] == ["new_country"]
    assert "rule_error:v14_extreme" in kinds["a rule error"]["reasons"]
    assert kinds["redis_unavailable"]["degraded"] and kinds["model_error"]["model"] is None


# ---- the rules file ------------------------------------------------------------------------------------------
def test_the_shipped_rules_file_matches_the_schema_and_loads():
    VALIDATORS["rules"].validate(yaml.safe_load(RULES_FILE.read_text()))
    assert load_rules(RULES_FILE).rules


def _doc_rule_files() -> list[str]:
    """The YAML examples of docs/rules.md that are whole rules files (a lone rule is put under `rules:`)."""
    text = (ROOT / "docs" / "rules.md").read_text()
    files = []
    for block in re.findall(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if "<" in block:  # a template such as `{kind: <kind>, ...}`
            continue
        files.append("rules:\n" + block if block.startswith("  - ") else block)
    return files


DOC_RULE_FILES = _doc_rule_files()


@pytest.mark.parametrize("text", DOC_RULE_FILES, ids=[f"rules.md-yaml-{i + 1}" for i in range(len(DOC_RULE_FILES))])
def test_rules_files_in_the_docs_match_the_schema_and_load(text, tmp_path):
    data = yaml.safe_load(text)
    data.setdefault("rules", [])
    VALIDATORS["rules"].validate(data)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_rules(path)


def test_the_rules_schema_names_what_the_parser_knows():
    """Keys, kinds, fields and choices of schemas/rules.schema.json are those of stream_app.rules and .aggregates."""
    schema, defs = SCHEMAS["rules"], SCHEMAS["rules"]["$defs"]
    rule, aggregate = defs["rule"]["properties"], defs["aggregate"]["properties"]
    assert set(schema["properties"]) == rules_module._TOP_KEYS
    assert set(rule) == rules_module._RULE_KEYS
    assert set(schema["properties"]["model"]["anyOf"][0]["properties"]) == rules_module._MODEL_KEYS
    assert set(defs["list"]["anyOf"][0]["properties"]) == rules_module._LIST_KEYS
    assert set(aggregate) == set(AGGREGATE_KEYS)
    assert set(aggregate["kind"]["enum"]) == set(KINDS)
    assert aggregate["by"]["enum"] == list(STRING_FIELDS)
    assert set(aggregate["of"]["enum"]) == set(STRING_FIELDS) | set(NUMERIC_FIELDS)
    assert rule["action"]["enum"] == list(ACTIONS) and rule["mode"]["enum"] == list(rules_module.MODES)
    assert rule["severity"]["enum"] == [*rules_module.SEVERITIES, None]
    assert set(defs["aggregate_name"]["not"]["enum"]) == CEL_RESERVED
    for condition in defs["aggregate"]["allOf"]:
        for kind in condition["if"]["properties"]["kind"]["enum"]:
            of = KINDS[kind].of
            if of is None:
                assert condition["then"] == {"not": {"required": ["of"]}}, kind
            else:
                allowed = condition["then"]["properties"]["of"]
                assert set(allowed.get("enum", [allowed.get("const")])) == set(of), kind


BASE_RULES: dict[str, Any] = {
    "precedence": ["allow", "block", "review"],
    "model": {"review_above": "threshold", "block_above": 99.9},
    "lists": {"blocked_ips": {"description": "IPs to block"}},
    "aggregates": {"payments_5m": {"kind": "count", "by": "account_id", "window": "5m"},
                   "amount_mean": {"kind": "mean", "by": "account_id", "of": "amount", "ttl": "30d"}},
    "rules": [{"id": "card_testing", "when": "agg.payments_5m + 1 > 8", "action": "review", "severity": "high",
               "description": "many payments in minutes", "enabled": True},
              {"id": "blocked_ip", "when": "event.ip in lists.blocked_ips", "action": "block", "mode": "shadow"}],
}


def _set(path: str, value: Any):
    """A change to BASE_RULES: set the value at a dotted path (`rules.0.action`); `...` deletes the key."""
    def change(data: dict) -> None:
        *parents, last = path.split(".")
        for part in parents:
            data = data[int(part)] if isinstance(data, list) else data[part]
        key = int(last) if isinstance(data, list) else last
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return change


REFUSED_RULES = {  # case: the change to BASE_RULES that the schema refuses, and the worker must refuse too
    "misspelled-top-key": _set("flag_severty", "medium"),
    "no-rules": _set("rules", ...),
    "rules-not-a-list": _set("rules", {"card_testing": "agg.payments_5m > 8"}),
    "rule-not-a-mapping": _set("rules.0", "agg.payments_5m > 8"),
    "old-rule-type": _set("rules.0.type", "velocity"),
    "unknown-rule-key": _set("rules.0.priority", 3),
    "no-id": _set("rules.0.id", ...),
    "blank-id": _set("rules.0.id", " "),
    "no-when": _set("rules.0.when", ...),
    "when-not-a-string": _set("rules.0.when", True),
    "blank-when": _set("rules.0.when", "  "),
    "no-action": _set("rules.0.action", ...),
    "unknown-action": _set("rules.0.action", "deny"),
    "unknown-mode": _set("rules.1.mode", "dry_run"),
    "unknown-severity": _set("rules.0.severity", "critical"),
    "enabled-not-a-bool": _set("rules.0.enabled", "yes"),
    "precedence-short": _set("precedence", ["allow", "block"]),
    "precedence-twice": _set("precedence", ["allow", "allow", "block"]),
    "precedence-unknown": _set("precedence", ["allow", "block", "hold"]),
    "model-unknown-key": _set("model.block_at", 99.0),
    "band-over-100": _set("model.block_above", 101),
    "band-a-word": _set("model.review_above", "high"),
    "model-not-a-mapping": _set("model", [90, 99]),
    "list-unknown-key": _set("lists.blocked_ips.ttl", "1d"),
    "lists-not-a-mapping": _set("lists", ["blocked_ips"]),
    "aggregates-not-a-mapping": _set("aggregates", ["payments_5m"]),
    "aggregate-unknown-key": _set("aggregates.payments_5m.bucket", "1m"),
    "aggregate-unknown-kind": _set("aggregates.payments_5m.kind", "median"),
    "aggregate-unknown-by": _set("aggregates.payments_5m.by", "email"),
    "aggregate-no-by": _set("aggregates.payments_5m.by", ...),
    "aggregate-window-and-ttl": _set("aggregates.payments_5m.ttl", "1h"),
    "aggregate-no-span": _set("aggregates.payments_5m.window", ...),
    "aggregate-bad-duration": _set("aggregates.payments_5m.window", "5 minutes"),
    "count-with-of": _set("aggregates.payments_5m.of", "amount"),
    "mean-without-of": _set("aggregates.amount_mean.of", ...),
    "mean-of-a-string": _set("aggregates.amount_mean.of", "country"),
    "aggregate-name-not-an-identifier": _set("aggregates.1st", {"kind": "count", "by": "ip", "window": "1h"}),
    "aggregate-name-a-keyword": _set("aggregates.in", {"kind": "count", "by": "ip", "window": "1h"}),
    "action-null": _set("rules.0.action", None),
    "mode-null": _set("rules.1.mode", None),
}


def _load(data: Any, tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_rules(path)


def test_the_base_rules_file_of_the_refusals_is_valid(tmp_path):
    VALIDATORS["rules"].validate(BASE_RULES)
    assert [rule.id for rule in _load(BASE_RULES, tmp_path).rules] == ["card_testing", "blocked_ip"]


@pytest.mark.parametrize("change", REFUSED_RULES.values(), ids=REFUSED_RULES)
def test_a_rules_file_the_schema_refuses_the_worker_refuses(change, tmp_path):
    data = copy.deepcopy(BASE_RULES)
    change(data)
    assert not VALIDATORS["rules"].is_valid(data)
    with pytest.raises(RulesError):
        _load(data, tmp_path)


# ---- list entries --------------------------------------------------------------------------------------------
def test_list_entry_examples_are_what_the_reader_reads():
    """The examples load as `fraudmon replay --lists` loads a file, and are the canonical form of what they hold."""
    StaticLists.from_file(EXAMPLES / "list-entries.jsonl")
    for entry in LIST_ENTRIES:
        assert entry_from_dict(entry).to_dict() == entry


@pytest.mark.parametrize("sample", INVALID_LIST_ENTRIES,
                         ids=[f"{s['breaks']}-{s['case']}" for s in INVALID_LIST_ENTRIES])
def test_invalid_list_entries_fail_the_schema_and_the_reader(sample):
    errors = list(VALIDATORS["list_entry"].iter_errors(sample["entry"]))
    assert errors and {_blamed(e, sample["entry"]) for e in errors} == {sample["breaks"]}
    with pytest.raises(ListsError):
        entry_from_dict(sample["entry"])


def test_list_records_written_by_fraudmon_lists_match_the_schema(monkeypatch):
    """`fraudmon lists add` writes the audit record then the entry, keyed `<list>:<value>`; `remove` a tombstone."""
    sent: list[tuple[str, bytes, bytes | None]] = []
    monkeypatch.setattr(lists_tool, "_send", lambda settings, records: sent.extend(records))
    settings = load_settings(environ={})
    topics = settings.topics
    lists_tool.add(settings, "blocked_ips", "203.0.113.7", ttl="24h", reason="card testing", author="ana")
    lists_tool.add(settings, "trusted_accounts", "kunde Müller", reason="", author="bo")
    lists_tool.add(settings, "blocked_devices", "dev-9", ttl=60_000, reason="stolen phone ☎", author="ana",
                   now_ms=FILE_NOW_MS)
    lists_tool.remove(settings, "blocked_ips", "203.0.113.7", reason="customer's NAT", author="ana")
    assert [topic for topic, _, _ in sent] == [topics.lists_audit, topics.lists] * 4
    entries = [(key, value) for topic, key, value in sent if topic == topics.lists]
    for key, value in entries[:3]:
        entry = json.loads(value)
        VALIDATORS["list_entry"].validate(entry)
        assert key == f"{entry['list']}:{entry['value']}".encode()
        assert parse_record(key, value)[2] is not None
    assert [json.loads(v)["expires_at"] is None for _, v in entries[:3]] == [False, True, False]
    assert entries[3] == (b"blocked_ips:203.0.113.7", None), "a remove is a tombstone"


@pytest.mark.integration
def test_list_entries_on_the_topic_match_the_schema(settings: Settings, kafka_bootstrap: str):
    run = uuid.uuid4().hex[:8]
    topics = settings.topics.model_copy(update={"lists": f"lists-{run}", "lists_audit": f"lists-audit-{run}"})
    ensure_lists_topics(kafka_bootstrap, topics)
    settings = settings.model_copy(update={"topics": topics})
    lists_tool.add(settings, "blocked_ips", "203.0.113.7", ttl="1h", reason="card testing", author="ana")
    lists_tool.add(settings, "trusted_accounts", "acc-42", author="bo")
    lists_tool.remove(settings, "blocked_ips", "203.0.113.7", author="ana")
    records = _collect_records(kafka_bootstrap, topics.lists, 3)
    assert [r.key for r in records] == [b"blocked_ips:203.0.113.7", b"trusted_accounts:acc-42",
                                        b"blocked_ips:203.0.113.7"]
    for record in records[:2]:
        VALIDATORS["list_entry"].validate(json.loads(record.value))
    assert records[2].value is None


def test_dead_letters_match_the_schema_and_stay_bounded(engine):
    huge_binary, huge_text = b"\xff" + bytes(range(256)) * 1000, b'{"pad": "' + b"x" * 100_000 + b'"}'
    messages = [_raw(sample["event"]) for sample in INVALID] + [
        RawMessage(value, b"acc", "transactions", 5, 77) for value in (huge_binary, huge_text, None)]
    letters = [letter for _, letter in engine.process(messages).dead_letters]
    assert len(letters) == len(messages)
    for letter in letters:
        VALIDATORS["dead_letter"].validate(letter)
    for sample, letter in zip(INVALID, letters[:len(INVALID)], strict=True):
        assert _names(letter["error"], sample["breaks"]) and json.loads(letter["raw"]) == sample["event"]
    binary, text, tombstone = letters[-3:]
    assert binary["raw_encoding"] == "base64" and binary["raw_truncated"] and len(binary["raw"]) == 16_384
    assert binary["raw_bytes"] == len(huge_binary) and binary["raw_sha256"] == hashlib.sha256(huge_binary).hexdigest()
    assert text["raw_encoding"] == "utf-8" and text["raw_truncated"] and len(text["raw"]) == 16_384
    assert tombstone["raw"] == "" and tombstone["error"].startswith("message:")


def test_internal_dead_letters_match_the_schema(engine):
    engine.store = _BuggyStore()
    letters = [letter for _, letter in engine.process([_raw(event) for event in _valid_events()[:3]]).dead_letters]
    assert len(letters) == 3 and all(letter["error"].startswith("internal: RuntimeError:") for letter in letters)
    for letter in letters:
        VALIDATORS["dead_letter"].validate(letter)


# ---- a live worker -------------------------------------------------------------------------------------------
def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def _collect_records(bootstrap: str, topic: str, expected: int, timeout_s: float = 90.0) -> list:
    """Every record of `topic` once `expected` arrived (or at the timeout), and any that follow within 1 s."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    consumer.seek_to_beginning()
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    for batch in consumer.poll(timeout_ms=1000).values():
        records.extend(batch)
    consumer.close()
    return records


def _collect(bootstrap: str, topic: str, expected: int, timeout_s: float = 90.0) -> list[dict]:
    return [json.loads(record.value) for record in _collect_records(bootstrap, topic, expected, timeout_s)]


@pytest.mark.integration
def test_live_worker_outputs_match_the_schemas(kafka_bootstrap, worker_topics, start_worker):
    run = uuid.uuid4().hex[:8]
    events = [{**event, "transaction_id": f"{event['transaction_id']}-{run}"} for event in _valid_events()]
    invalid = [json.dumps(sample["event"]) for sample in INVALID]
    start_worker(worker_topics)
    _produce(kafka_bootstrap, worker_topics["transactions"],
             [(e["account_id"].encode(), json.dumps(e).encode()) for e in events]
             + [(f"bad-{i}".encode(), raw.encode()) for i, raw in enumerate(invalid)])

    decisions = _collect(kafka_bootstrap, worker_topics["scores"], len(events))
    letters = _collect(kafka_bootstrap, worker_topics["dead_letter"], len(invalid))
    assert sorted(d["transaction_id"] for d in decisions) == sorted(e["transaction_id"] for e in events)
    assert sorted(letter["raw"] for letter in letters) == sorted(invalid), "one dead letter per invalid sample"
    for decision in decisions:
        check_decision(decision)
    for letter in letters:
        VALIDATORS["dead_letter"].validate(letter)
    errors = {letter["raw"]: letter["error"] for letter in letters}
    for sample, raw in zip(INVALID, invalid, strict=True):
        assert _names(errors[raw], sample["breaks"]), errors[raw]


# ---- the document --------------------------------------------------------------------------------------------
def _doc_section(heading: str) -> str:
    start = DOC.index(f"\n## {heading}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end > 0 else None]


def _first_table_names(section: str) -> list[str]:
    """The names in backticks that start the rows of the section's first table."""
    table = re.search(r"^\|.*(?:\n\|.*)*", section, re.MULTILINE).group()
    return re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE)


def _documented_labels(cell: str) -> set[str]:
    """Label names of a metrics table cell: `decision`: `flag`, `pass`; `action`: ... or `version`, `name`."""
    labels = set()
    for part in filter(str.strip, cell.split(";")):
        named = re.match(r"\s*`(\w+)`:", part)
        labels |= {named.group(1)} if named else set(re.findall(r"`(\w+)`", part))
    return labels


def test_doc_metrics_table_is_what_the_worker_registers():
    """Every metric WorkerMetrics registers, with its type and label names, and nothing else."""
    rows = re.findall(r"^\| `(fraud_\w+)` \| (\w+) \|([^|]*)\|", _doc_section("Metrics"), re.MULTILINE)
    documented = {(name, kind, frozenset(_documented_labels(labels))) for name, kind, labels in rows}
    metrics = WorkerMetrics()
    registered = {(f"{m._name}_total" if m._type == "counter" else m._name, m._type, frozenset(m._labelnames))
                  for m in vars(metrics).values() if hasattr(m, "_labelnames")}
    assert len(rows) == len(documented) and documented == registered
    assert {name for name, _, _ in registered} == {
        f"{f.name}_total" if f.type == "counter" else f.name for f in metrics.registry.collect()}


def test_doc_topics_table_is_every_topic_setting():
    rows = re.findall(r"^\| `topics\.(\w+)` \| `([^`]+)` \|", _doc_section("Topics"), re.MULTILINE)
    defaults = Settings().topics
    names = {name for name, field in type(defaults).model_fields.items() if field.annotation is str}
    assert {name for name, _ in rows} == names and len(rows) == len(names)
    assert all(getattr(defaults, name) == default for name, default in rows)


def test_doc_rules_section_points_to_the_reference_and_the_schema():
    section = _doc_section("Rules")
    assert "(rules.md)" in section and "(../schemas/rules.schema.json)" in section


@pytest.mark.parametrize(("heading", "schema"), [
    ("The transaction event", "event"), ("The decision", "decision"), ("The dead letter", "dead_letter"),
    ("The analyst verdict", "verdict"), ("The list entry", "list_entry"),
])
def test_doc_sections_match_their_schema(heading, schema):
    """The section's field table lists the schema's fields, and its JSON examples validate."""
    section = _doc_section(heading)
    assert sorted(_first_table_names(section)) == sorted(SCHEMAS[schema]["properties"])
    examples = re.findall(r"^```json\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert examples
    for example in examples:
        VALIDATORS[schema].validate(json.loads(example))


def test_valid_examples_cover_every_field_and_timestamp_form():
    """Every event field is set by some example; timestamps come as epoch ms and ISO, one ahead of FILE_NOW."""
    assert set(SCHEMAS["event"]["properties"]) <= {name for e in VALID for name, v in e.items() if v is not None}
    assert {type(e["timestamp"]) for e in VALID} == {int, str}
    assert any(datetime.fromisoformat(e["timestamp"]) > FILE_NOW for e in VALID if isinstance(e["timestamp"], str))


if __name__ == "__main__":  # rewrite schemas/examples/decisions.jsonl from the engine
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        made = example_decisions(Path(scratch))
    (EXAMPLES / "decisions.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in made))
    print(f"wrote {len(made)} decisions to {EXAMPLES / 'decisions.jsonl'}")
