"""The contracts users read (docs/contracts.md, schemas/) held against the code: the JSON Schemas and their
examples, the event gate, the engine's decisions and dead letters, a live worker, and the metric names."""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from fraudmon.core.config import load_settings
from fraudmon.core.errors import InvalidEvent, StateUnavailable
from fraudmon.core.events import parse_event
from stream_app.engine import RawMessage
from stream_app.metrics import WorkerMetrics
from stream_app.replay import offline_engine
from stream_app.rules import RULE_TYPES
from stream_app.scoring import OnnxModel
from stream_app.state import StateFailure

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "schemas" / "examples"
DOC = (ROOT / "docs" / "contracts.md").read_text()
SCHEMAS = {name: json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
           for name in ("event", "decision", "dead_letter", "verdict")}
VALIDATORS = {name: Draft202012Validator(schema) for name, schema in SCHEMAS.items()}
FILE_NOW = datetime(2026, 11, 22, 10, 20, tzinfo=UTC)  # the examples are written as if it were this moment


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


@pytest.mark.parametrize(("name", "schema"), [("decisions.jsonl", "decision"), ("dead-letters.jsonl", "dead_letter"),
                                              ("verdicts.jsonl", "verdict")])
def test_output_examples_match_their_schema(name, schema):
    for value in _lines(name):
        VALIDATORS[schema].validate(value)


# ---- the engine's outputs ------------------------------------------------------------------------------------
def test_engine_decisions_match_the_schema(engine):
    events = _valid_events()
    outcome = engine.process([_raw(event) for event in events])
    assert not outcome.dead_letters and len(outcome.decisions) == len(events)
    for decision in outcome.decisions:
        VALIDATORS["decision"].validate(decision)
    by_tx = {d["transaction_id"]: d for d in outcome.decisions}
    assert by_tx["tx-0009"]["decision"] == "pass"
    assert by_tx["tx-0005"]["decision"] == "flag" and "amount_over_limit" in by_tx["tx-0005"]["reasons"]


def test_flagged_decisions_carry_context_and_explained_fields(engine):
    """A flag repeats the event's context fields; each top feature names its field, raw value and normal range."""
    events = _valid_events()
    decisions = {d["transaction_id"]: d for d in engine.process([_raw(event) for event in events]).decisions}
    context = SCHEMAS["decision"]["properties"]["context"]["properties"]
    item_keys = set(SCHEMAS["decision"]["properties"]["model"]["anyOf"][0]["properties"]["top_features"]["items"]
                    ["properties"])
    for event in events:
        decision = decisions[event["transaction_id"]]
        VALIDATORS["decision"].validate(decision)
        assert all(set(item) == item_keys for item in decision["model"]["top_features"])
        if decision["decision"] == "flag":
            assert set(decision["context"]) == {k for k in context if event.get(k) is not None}
        else:
            assert "context" not in decision
    with_context = {**decisions["tx-0005"], "decision": "pass", "reasons": []}
    assert not VALIDATORS["decision"].is_valid(with_context), "context only on flags"


class _DownStore:
    def connect(self) -> None:
        pass

    def observe(self, rules, events):
        raise StateUnavailable("test: Redis does not answer")


class _CorruptStore(_DownStore):
    def observe(self, rules, events):
        return [StateFailure("test: corrupt key")] * len(events)


class _BuggyStore(_DownStore):
    def observe(self, rules, events):
        raise RuntimeError("test: a bug in the store")


class _BrokenModel(OnnxModel):
    def predict(self, x):
        raise RuntimeError("test: the model cannot score")


@pytest.mark.parametrize("cause", ["redis_unavailable", "state_error", "model_error"])
def test_degraded_decisions_match_the_schema(engine, cause):
    if cause == "model_error":
        engine.set_model(_BrokenModel(session=engine.model.session, card=engine.model.card, path=engine.model.path))
    else:
        engine.store = _DownStore() if cause == "redis_unavailable" else _CorruptStore()
    decisions = engine.process([_raw(event) for event in _valid_events()]).decisions
    assert decisions and all(d["degraded"] and f"skipped:{cause}" in d["reasons"] for d in decisions)
    assert any(d["decision"] == "flag" for d in decisions), "amount_over_limit flags without state or model"
    for decision in decisions:
        VALIDATORS["decision"].validate(decision)


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


def _collect(bootstrap: str, topic: str, expected: int, timeout_s: float = 90.0) -> list[dict]:
    """Every record of `topic` once `expected` arrived (or at the timeout), and any that follow within 1 s."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    consumer.seek_to_beginning()
    values: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            values.extend(json.loads(r.value) for r in records)
    for records in consumer.poll(timeout_ms=1000).values():
        values.extend(json.loads(r.value) for r in records)
    consumer.close()
    return values


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
    for value, schema in [*((d, "decision") for d in decisions), *((letter, "dead_letter") for letter in letters)]:
        VALIDATORS[schema].validate(value)
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


def test_doc_metrics_table_is_what_the_worker_registers():
    rows = re.findall(r"^\| `(fraud_\w+)` \| (\w+) \|", _doc_section("Metrics"), re.MULTILINE)
    registered = {(f"{family.name}_total" if family.type == "counter" else family.name, family.type)
                  for family in WorkerMetrics().registry.collect()}
    assert len(rows) == len(set(rows)) and set(rows) == registered


def test_doc_rules_table_is_every_rule_type_with_its_parameters():
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", _doc_section("Rules"), re.MULTILINE)
    documented = {name: set(re.findall(r"`(\w+)`", parameters)) for name, parameters in rows}
    assert documented == {name: set(spec.params.model_fields) for name, spec in RULE_TYPES.items()}


@pytest.mark.parametrize(("heading", "schema"), [
    ("The transaction event", "event"), ("The decision", "decision"), ("The dead letter", "dead_letter"),
    ("The analyst verdict (planned)", "verdict"),
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
