"""Rules: parsing `config/rules.yaml` with clear errors, and each rule type firing only where it should."""

from __future__ import annotations

import pytest

from fraudmon.core.errors import RulesError
from fraudmon.core.events import event_from_dict
from stream_app.decision import decide
from stream_app.rules import SEVERITIES, AccountState, evaluate, load_rules, parse_rules
from tests.conftest import PROJECT_ROOT

T0 = 1_763_800_000_000


def event(amount: float = 50.0, **fields):
    return event_from_dict({"transaction_id": "t", "account_id": "a", "amount": amount, "timestamp": T0,
                            "country": "DE", "ip": "10.0.0.1", **fields})


def one(rule: dict):
    return parse_rules({"rules": [{"id": "r", **rule}]})


def hit_ids(rules, ev, state):
    return [hit.id for hit in evaluate(rules, ev, state)]


def test_shipped_rules_file_has_every_type():
    rules = load_rules(PROJECT_ROOT / "config" / "rules.yaml")
    assert {r.type for r in rules.rules} == {"velocity", "new_country", "ip_fanout", "new_counterparty_amount",
                                             "new_account_amount", "amount_zscore", "amount_over",
                                             "duplicate_transaction_id"}
    assert all(r.enabled and r.severity in SEVERITIES for r in rules.rules)


@pytest.mark.parametrize(("rule", "message"), [
    ({"type": "teleport"}, "unknown type 'teleport'"),
    ({"type": "velocity", "window": "60s"}, "`max_count` is required"),
    ({"type": "velocity", "max_count": 3, "window": "sixty"}, "not a duration"),
    ({"type": "velocity", "max_count": 2.5, "window": "60s"}, "whole number"),
    ({"type": "amount_over", "limit": -1}, ">= 0"),
    ({"type": "amount_over", "limit": 5, "colour": "red"}, "unknown key(s) colour"),
    ({"type": "amount_over", "limit": 5, "severity": "urgent"}, "severity 'urgent'"),
])
def test_invalid_rules_say_what_to_fix(rule, message):
    with pytest.raises(RulesError) as error:
        one(rule)
    assert message in str(error.value)


def test_duplicate_ids_and_missing_list_are_refused(tmp_path):
    with pytest.raises(RulesError, match="duplicate rule id"):
        parse_rules({"rules": [{"id": "x", "type": "amount_over", "limit": 1}] * 2})
    with pytest.raises(RulesError, match="`rules:` list"):
        parse_rules({"rule": []})
    broken = tmp_path / "rules.yaml"
    broken.write_text("rules: [unclosed")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(broken)
    with pytest.raises(RulesError, match="does not exist"):
        load_rules(tmp_path / "missing.yaml")


def test_velocity_counts_the_event_itself():
    rules = one({"type": "velocity", "max_count": 3, "window": "60s"})
    assert hit_ids(rules, event(), AccountState(velocity_counts={60_000: 2})) == []
    assert hit_ids(rules, event(), AccountState(velocity_counts={60_000: 3})) == ["r"]


def test_new_country_needs_history():
    rules = one({"type": "new_country", "min_history": 3})
    unseen = {"country_seen": False, "known_countries": ("FR",)}
    assert hit_ids(rules, event(), AccountState(prior_count=2, **unseen)) == []
    hits = evaluate(rules, event(), AccountState(prior_count=3, **unseen))
    assert [h.id for h in hits] == ["r"] and "DE" in hits[0].detail and "FR" in hits[0].detail
    assert hit_ids(rules, event(), AccountState(prior_count=30)) == []


def test_ip_fanout_and_new_counterparty():
    fanout = one({"type": "ip_fanout", "max_accounts": 3, "window": "10m"})
    assert hit_ids(fanout, event(), AccountState(fanout_counts={600_000: 3})) == []
    assert hit_ids(fanout, event(), AccountState(fanout_counts={600_000: 4})) == ["r"]
    assert hit_ids(fanout, event(ip=None), AccountState(fanout_counts={600_000: 4})) == []
    cp = one({"type": "new_counterparty_amount", "min_amount": 1000})
    new = AccountState(counterparty_seen=False)
    assert hit_ids(cp, event(1000, counterparty_id="c"), new) == ["r"]
    assert hit_ids(cp, event(999, counterparty_id="c"), new) == []
    assert hit_ids(cp, event(5000, counterparty_id="c"), AccountState()) == []


def test_amount_rules():
    zscore = one({"type": "amount_zscore", "z": 4, "min_history": 5})
    habit = AccountState(amount_count=10, amount_mean=50.0, amount_std=10.0)
    assert hit_ids(zscore, event(89), habit) == []
    assert hit_ids(zscore, event(91), habit) == ["r"]
    assert hit_ids(zscore, event(1000), AccountState(amount_count=4, amount_mean=50.0, amount_std=10.0)) == []
    over = one({"type": "amount_over", "limit": 100})
    assert hit_ids(over, event(100), None) == [] and hit_ids(over, event(100.01), None) == ["r"]


def test_new_account_amount_uses_the_event_time():
    rules = one({"type": "new_account_amount", "max_age": "1d", "min_amount": 500})
    young = "2025-11-21T12:00:00Z"  # T0 is 2025-11-22T08:26:40Z
    assert hit_ids(rules, event(600, account_created_at=young), None) == ["r"]
    assert hit_ids(rules, event(400, account_created_at=young), None) == []
    assert hit_ids(rules, event(600, account_created_at="2025-01-01T00:00:00Z"), None) == []


def test_without_state_only_stateless_rules_run():
    rules = parse_rules({"rules": [
        {"id": "v", "type": "velocity", "max_count": 0, "window": "1m"},
        {"id": "o", "type": "amount_over", "limit": 10},
    ]})
    assert hit_ids(rules, event(50), None) == ["o"]
    assert hit_ids(rules, event(50), AccountState(velocity_counts={60_000: 1})) == ["v", "o"]


def test_flag_severity_policy_and_disabled_rules():
    rules = parse_rules({"flag_severity": "high", "rules": [
        {"id": "low", "type": "amount_over", "limit": 10, "severity": "medium"},
        {"id": "off", "type": "amount_over", "limit": 10, "enabled": False},
    ]})
    hits = evaluate(rules, event(50), None)
    assert [h.id for h in hits] == ["low"] and decide(False, hits, rules.flag_severity) == ("pass", [])
    strict = parse_rules({"flag_severity": "medium", "rules": [
        {"id": "low", "type": "amount_over", "limit": 10, "severity": "medium"}]})
    assert decide(False, evaluate(strict, event(50), None), strict.flag_severity) == ("flag", ["low"])
