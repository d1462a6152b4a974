"""Verdicts counted against the decision and against each live rule that fired on it."""

from __future__ import annotations

import orjson

from stream_app.engine import RawMessage, remembered
from stream_app.metrics import WorkerMetrics
from stream_app.state import InMemoryStateStore
from stream_app.verdicts import count_verdicts


def verdict(tx: str, label: str) -> RawMessage:
    return RawMessage(orjson.dumps({"transaction_id": tx, "label": label, "reviewer": "ana"}), tx.encode(),
                      "transaction-verdicts", 0, 0)


def test_each_live_rule_of_a_decision_counts_the_verdict():
    store, metrics = InMemoryStateStore(), WorkerMetrics()
    store.remember([
        ("tx-1", remembered({"decision": "flag", "rules": [{"id": "ip_fanout"}, {"id": "blocked_ip"}]})),
        ("tx-2", remembered({"decision": "flag", "rules": [{"id": "ip_fanout"}]})),
        ("tx-3", remembered({"decision": "pass", "rules": []})),
    ])
    letters = count_verdicts([verdict("tx-1", "fraud"), verdict("tx-2", "legit"), verdict("tx-3", "legit"),
                              verdict("tx-unknown", "fraud")], store, metrics, 1_800_000_000.0)
    sample = metrics.registry.get_sample_value
    assert sample("fraud_rule_verdicts_total", {"rule": "ip_fanout", "verdict": "fraud"}) == 1
    assert sample("fraud_rule_verdicts_total", {"rule": "ip_fanout", "verdict": "legit"}) == 1
    assert sample("fraud_rule_verdicts_total", {"rule": "blocked_ip", "verdict": "fraud"}) == 1
    assert sample("fraud_rule_verdicts_total", {"rule": "blocked_ip", "verdict": "legit"}) is None
    assert sample("fraud_verdicts_total", {"decision": "flag", "verdict": "fraud"}) == 1
    assert sample("fraud_verdicts_total", {"decision": "pass", "verdict": "legit"}) == 1
    [(key, letter)] = letters
    assert key == b"tx-unknown" and letter["error"].startswith("transaction_id: no decision")
