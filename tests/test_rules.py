"""Rules: the file's refusals (with line and rule), actions and precedence, score bands, shadow rules, rule
errors, and the rules that read state skipped when the state is unavailable."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudmon.core.errors import RulesError
from fraudmon.core.events import event_from_dict
from stream_app.rules import (
    DEFAULT_PRECEDENCE,
    THRESHOLD,
    RuleHit,
    ScoreBands,
    decide,
    judge,
    load_rules,
    model_action,
    parse_rules,
)
from tests.conftest import PROJECT_ROOT

T0 = 1_763_800_000_000


def event(amount: float = 50.0, **fields):
    return event_from_dict({"transaction_id": "t", "account_id": "a", "amount": amount, "timestamp": T0,
                            "country": "DE", "ip": "10.0.0.1", **fields})


def load_text(tmp_path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return load_rules(path)


def test_shipped_rules_file_loads_with_every_action_and_a_shadow_rule():
    rules = load_rules(PROJECT_ROOT / "config" / "rules.yaml")
    assert {rule.action for rule in rules.rules} == {"allow", "review", "block"}
    assert [rule.id for rule in rules.rules if rule.mode == "shadow"] == ["new_country"]
    assert rules.precedence == DEFAULT_PRECEDENCE
    assert rules.bands.review_above == THRESHOLD and rules.bands.block_above is None
    assert {"blocked_ips", "trusted_accounts"} <= set(rules.lists)


@pytest.mark.parametrize(("text", "message"), [
    ("flag_severty: medium\nrules: []\n", "line 1: rules file: unknown key(s) flag_severty"),
    ("rules:\n  - id: r\n    when: 'true'\n    action: review\n    colour: red\n",
     "line 5: rule r: unknown key(s) colour"),
    ("rules:\n  - id: r\n    when: 'true'\n    action: flag\n",
     "rule r: action 'flag' must be one of allow, review, block"),
    ("rules:\n  - id: r\n    when: 'true'\n", "rule r: `action` is required"),
    ("rules:\n  - id: r\n    action: block\n", "rule r: `when` is required"),
    ("rules:\n  - id: r\n    when: 'true'\n    action: block\n    mode: dry\n",
     "mode 'dry' must be one of live, shadow"),
    ("rules:\n  - id: r\n    when: 'true'\n    action:\n", "rule r: action None must be one of"),
    ("rules:\n  - id: r\n    when: 'true'\n    action: block\n    mode:\n", "rule r: mode None must be one of"),
    ("rules:\n  - {id: model, when: 'true', action: block}\n", "must be lower-case letters"),
    ("rules:\n  - {id: 'a,b', when: 'true', action: block}\n", "must be lower-case letters"),
    ("rules:\n  - id: r\n    when: event.amount > \n    action: block\n", "line 3: rule r: when:"),
    ("rules:\n  - id: r\n    when: event.colour == 'red'\n    action: block\n", "line 3: rule r: when:"),
    ("rules:\n  - id: r\n    when: agg.nothing > 3\n    action: block\n", "rule r: when:"),
    ("rules:\n  - id: r\n    when: event.ip in lists.nowhere\n    action: block\n", "rule r: when:"),
    ("rules:\n  - id: r\n    when: event.amount + 1\n    action: block\n", "rule r: when:"),
    ("rules:\n  - {id: r, when: 'true', action: block}\n  - {id: r, when: 'false', action: allow}\n",
     "duplicate rule id(s): r"),
    ("precedence: [block, allow]\nrules: []\n", "precedence"),
    ("model: {review_above: 120}\nrules: []\n", "model.review_above: 120 must be a risk score from 0 to 100"),
    ("model: {review_above: 99, block_above: 50}\nrules: []\n", "model.block_above (50) is below review_above"),
    ("model: {review_abov: 99}\nrules: []\n", "model: unknown key(s) review_abov"),
    ("lists: {blocked: {descr: x}}\nrules: []\n", "list blocked: unknown key(s) descr"),
    ("aggregates: {n: {kind: median, by: account_id, ttl: 1d}}\nrules: []\n", "aggregate n"),
    ("rules: [\n", "not valid YAML"),
])
def test_a_bad_file_is_refused_with_line_and_rule(tmp_path, text, message):
    with pytest.raises(RulesError) as error:
        load_text(tmp_path, text)
    assert message in str(error.value), str(error.value)


def test_an_expression_error_names_the_line_of_a_folded_expression(tmp_path):
    with pytest.raises(RulesError) as error:
        load_text(tmp_path, """\
            rules:
              - id: r
                when: >-
                  event.amount > 10.0
                  && event.nope
                action: review
            """)
    assert "line 3: rule r: when:" in str(error.value) and "nope" in str(error.value)


def test_disabled_rules_are_checked_but_not_served(tmp_path):
    rules = load_text(tmp_path, "rules:\n  - {id: r, when: 'true', action: block, enabled: false}\n")
    assert rules.rules == ()
    with pytest.raises(RulesError):
        load_text(tmp_path, "rules:\n  - {id: r, when: 'event.nope', action: block, enabled: false}\n")


@pytest.mark.parametrize(("precedence", "model", "hits", "expected"), [
    (DEFAULT_PRECEDENCE, None, [], ("allow", [])),
    (DEFAULT_PRECEDENCE, "review", [], ("review", ["model"])),
    (DEFAULT_PRECEDENCE, "review", [("big", "review")], ("review", ["model", "big"])),
    (DEFAULT_PRECEDENCE, "review", [("ip", "block")], ("block", ["ip"])),
    (DEFAULT_PRECEDENCE, "block", [("ip", "block"), ("trusted", "allow")], ("allow", ["trusted"])),
    (("block", "allow", "review"), "review", [("ip", "block"), ("trusted", "allow")], ("block", ["ip"])),
    (("block", "allow", "review"), "review", [("trusted", "allow")], ("allow", ["trusted"])),
    (("block", "review", "allow"), "review", [("trusted", "allow")], ("review", ["model"])),
])
def test_precedence_picks_the_first_action_asked_for(precedence, model, hits, expected):
    assert decide(model, [RuleHit(rule, action, "") for rule, action in hits], precedence) == expected


@pytest.mark.parametrize(("bands", "outlier", "risk", "expected"), [
    (ScoreBands(), False, 99.0, None),
    (ScoreBands(), True, 99.0, "review"),
    (ScoreBands(THRESHOLD, 99.9), True, 99.95, "block"),
    (ScoreBands(THRESHOLD, 99.9), False, 99.95, "block"),
    (ScoreBands(90.0, 99.9), False, 95.0, "review"),
    (ScoreBands(90.0, 99.9), True, 90.0, None),  # a band is "strictly above"
    (ScoreBands(90.0, None), True, None, None),  # no risk score: no numeric band applies
])
def test_score_bands(bands, outlier, risk, expected):
    assert model_action(bands, outlier, risk) == expected


def test_judge_reports_live_and_shadow_hits_errors_and_skips_state_rules(tmp_path):
    rules = load_text(tmp_path, """\
        lists: {blocked_ips: {}}
        aggregates:
          n: {kind: count, by: account_id, window: 5m}
        rules:
          - {id: big, when: event.amount > 100, action: review}
          - {id: busy, when: agg.n > 2, action: review}
          - {id: blocked, when: event.ip in lists.blocked_ips, action: block}
          - {id: risky, when: score > 50.0, action: review, mode: shadow}
          - {id: v1, when: 'event.features["V1"] > 3.0', action: review}
        """)
    lists = {"blocked_ips": {"10.0.0.1"}}
    verdict = judge(rules, event(500.0), (3,), 60.0, lists)
    assert [(h.id, h.action) for h in verdict.hits] == [("big", "review"), ("busy", "review"), ("blocked", "block")]
    assert [h.id for h in verdict.shadow_hits] == ["risky"]
    assert verdict.errors == ["v1"]  # the event has no feature V1
    assert "event.amount=500" in verdict.hits[0].detail and "agg.n=3" in verdict.hits[1].detail
    unavailable = judge(rules, event(500.0), None, None, {"blocked_ips": set()})
    assert [h.id for h in unavailable.hits] == ["big"]
    assert unavailable.errors == ["risky", "v1"]  # no risk score; no feature
    assert decide(None, verdict.hits, rules.precedence) == ("block", ["blocked"])


def test_an_event_without_a_field_reads_it_as_empty_and_has_tells(tmp_path):
    rules = load_text(tmp_path, """\
        rules:
          - {id: no_ip, when: '!has(event.ip)', action: review}
          - {id: empty, when: event.device_id == "", action: review}
        """)
    assert [h.id for h in judge(rules, event(ip=None), (), None, {}).hits] == ["no_ip", "empty"]
    assert [h.id for h in judge(rules, event(device_id="d"), (), None, {}).hits] == []


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=30), st.sampled_from(["event.amount > 5", "agg.n > 1", "true", "review",
                                                            "block", "allow", "shadow", "count", "account_id", "5m"]))
_keys = st.one_of(st.text(max_size=12), st.sampled_from(["rules", "id", "when", "action", "mode", "aggregates",
                                                         "lists", "model", "precedence", "kind", "by", "of",
                                                         "window", "ttl", "review_above", "block_above", "n"]))
_documents = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner,
                                                                                                  max_size=5),
                          max_leaves=25)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=st.dictionaries(_keys, _documents, max_size=6))
def test_no_rules_document_raises_anything_but_a_rules_error(document):
    """Whatever the YAML holds, the file is either a rule set or refused with a RulesError (never a crash)."""
    try:
        parse_rules(document)
    except RulesError:
        pass


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_no_rules_file_text_raises_anything_but_a_rules_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "rules.yaml"
    path.write_text(text)
    try:
        load_rules(path)
    except RulesError:
        pass
