"""The rules file (`config/rules.yaml`, language reference: docs/rules.md): rules written as CEL expressions over
the event, the risk score, declared aggregates and named lists, each choosing an action; and the policy that turns
the model's score band and the rules' hits into one action.

Pure and synchronous. `judge` sees the aggregates *before* the event (or `None` when the state store could not
answer, in which case the rules that read `agg` are skipped and the decision says so).
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from fraudmon.core.errors import RulesError
from fraudmon.core.events import Event
from stream_app.aggregates import Aggregate, aggregate_type, parse_aggregates
from stream_app.expressions import Compiled, Declarations, EvalError, ExpressionError, compile_expression

ACTIONS = ("allow", "review", "block")
DEFAULT_PRECEDENCE = ("allow", "block", "review")
MODES = ("live", "shadow")
SEVERITIES = ("low", "medium", "high")
MODEL_RULE = "model"  # the id under which the model's score band takes part in the precedence
THRESHOLD = "threshold"  # a score band at the model card's threshold
_TOP_KEYS = {"precedence", "model", "lists", "aggregates", "rules"}
_RULE_KEYS = {"id", "when", "action", "mode", "severity", "description", "enabled"}
_MODEL_KEYS = {"review_above", "block_above"}
_LIST_KEYS = {"description"}
NO_LISTS: Mapping[str, Container[str]] = {}
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # rule ids and list names


@dataclass(frozen=True)
class Rule:
    id: str
    when: Compiled
    action: str
    mode: str = "live"
    severity: str | None = None
    description: str = ""

    @cached_property
    def reads_state(self) -> bool:
        return any(name.startswith("agg.") for name in self.when.references)


@dataclass(frozen=True, slots=True)
class RuleHit:
    id: str
    action: str
    detail: str


@dataclass(frozen=True)
class ScoreBands:
    """The model's risk-score bands: above `review_above` (a risk score, or the card's threshold) the model asks for
    review, above `block_above` (None: never) for a block."""

    review_above: float | str = THRESHOLD
    block_above: float | None = None


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    aggregates: tuple[Aggregate, ...] = ()
    lists: Mapping[str, str] | None = None  # declared list name -> description
    precedence: tuple[str, ...] = DEFAULT_PRECEDENCE
    bands: ScoreBands = ScoreBands()

    @cached_property
    def stateful(self) -> bool:
        return bool(self.aggregates)


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the rules said about one event: live hits, shadow hits, rules that failed on it, and rules skipped
    because the state was unavailable."""

    hits: list[RuleHit]
    shadow_hits: list[RuleHit]
    errors: list[str]


def judge(ruleset: RuleSet, event: Event, agg: Sequence[Any] | None, score: float | None,
          lists: Mapping[str, Container[str]]) -> Judgement:
    """Every rule that fires on `event`, judged against the aggregates before it (`agg` None: the rules that read
    state are skipped); a rule that fails on this event is named in `errors` and does not fire."""
    hits: list[RuleHit] = []
    shadow_hits: list[RuleHit] = []
    errors: list[str] = []
    for rule in ruleset.rules:
        if agg is None and rule.reads_state:
            continue
        try:
            fired = rule.when.fn(event, agg, score, lists)
        except EvalError:
            errors.append(rule.id)
            continue
        if fired:
            hit = RuleHit(rule.id, rule.action, detail(rule.when, event, agg, score, lists))
            (hits if rule.mode == "live" else shadow_hits).append(hit)
    return Judgement(hits, shadow_hits, errors)


def detail(when: Compiled, event: Event, agg: Sequence[Any] | None, score: float | None,
           lists: Mapping[str, Container[str]]) -> str:
    """The values that made a rule fire, e.g. `agg.payments_5m=9, event.amount=12.5`."""
    parts = []
    for name in when.references:
        if name.startswith("lists."):
            continue
        try:
            value = when.value_of(name, event, agg, score, lists)
        except EvalError:
            continue
        parts.append(f"{name}={value:.6g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def decide(model_action: str | None, hits: Sequence[RuleHit], precedence: Sequence[str]) -> tuple[str, list[str]]:
    """The action and what chose it: the first action in `precedence` that the model's band (`model`) or a live
    rule asked for, with the ids that asked for it (the model first); `allow` with no reasons when none did."""
    for action in precedence:
        chosen = ([MODEL_RULE] if model_action == action else []) + [h.id for h in hits if h.action == action]
        if chosen:
            return action, chosen
    return "allow", []


def model_action(bands: ScoreBands, is_outlier: bool, risk_score: float | None) -> str | None:
    """The action the model's score band asks for, or None."""
    if risk_score is not None and bands.block_above is not None and risk_score > bands.block_above:
        return "block"
    above = is_outlier if bands.review_above == THRESHOLD else (risk_score is not None
                                                                and risk_score > bands.review_above)
    return "review" if above else None


# ---- the file -------------------------------------------------------------------------------------------------
class _Located(dict):
    """A YAML mapping that knows the line of each of its keys (for errors)."""

    line: int = 0
    key_lines: dict[str, int]
    value_columns: dict[str, tuple[int, int, bool]]  # key -> (line, column) of a plain one-line value, and plain?


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Located:
    located = _Located(loader.construct_mapping(node, deep=True))
    located.line = node.start_mark.line + 1
    located.key_lines = {}
    located.value_columns = {}
    for key, value in node.value:
        if isinstance(key.value, str):
            located.key_lines[key.value] = key.start_mark.line + 1
            located.value_columns[key.value] = (value.start_mark.line + 1, value.start_mark.column + 1,
                                                isinstance(value, yaml.ScalarNode) and value.style is None)
    return located


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _line(mapping: Any, key: str | None = None) -> str:
    if not isinstance(mapping, _Located):
        return ""
    return f"line {mapping.key_lines.get(key, mapping.line) if key else mapping.line}: "


def _refuse_unknown(mapping: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in mapping if key not in allowed)
    if unknown:
        raise RulesError(f"{_line(mapping, unknown[0])}{where}: unknown key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(allowed))}")


def _choice(mapping: Mapping, key: str, choices: Sequence[str], default: str | None, where: str) -> str | None:
    value = mapping.get(key, default)
    if (key in mapping or value is not None) and value not in choices:
        raise RulesError(f"{_line(mapping, key)}{where}: {key} {value!r} must be one of {', '.join(choices)}")
    return value


def _band(mapping: Mapping, key: str, default: float | str | None) -> float | str | None:
    value = mapping.get(key, default)
    if value is None or value == THRESHOLD:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise RulesError(f"{_line(mapping, key)}model.{key}: {value!r} must be a risk score from 0 to 100"
                         f"{' or `threshold`' if key == 'review_above' else ''}")
    return float(value)


def _parse_bands(raw: Any) -> ScoreBands:
    if raw is None:
        return ScoreBands()
    if not isinstance(raw, Mapping):
        raise RulesError(f"{_line(raw)}model: must be a mapping with review_above and block_above")
    _refuse_unknown(raw, _MODEL_KEYS, "model")
    review, block = _band(raw, "review_above", THRESHOLD), _band(raw, "block_above", None)
    if isinstance(review, float) and block is not None and block < review:
        raise RulesError(f"{_line(raw, 'block_above')}model.block_above ({block:g}) is below review_above "
                         f"({review:g})")
    return ScoreBands(review, block)


def _parse_precedence(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_PRECEDENCE
    if not isinstance(raw, list) or sorted(map(str, raw)) != sorted(ACTIONS):
        raise RulesError(f"precedence: {raw!r} must list allow, review and block once each, the winning action "
                         "first (default: [allow, block, review])")
    return tuple(raw)


def _parse_lists(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RulesError(f"{_line(raw)}lists: must be a mapping of list name -> {{description: ...}}")
    lists = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise RulesError(f"{_line(raw, name)}list {name!r}: a name is lower-case letters, digits and _, "
                             "starting with a letter (at most 64)")
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise RulesError(f"{_line(raw, name)}list {name}: must be a mapping (description)")
        _refuse_unknown(spec, _LIST_KEYS, f"list {name}")
        lists[str(name)] = str(spec.get("description", ""))
    return lists


def _parse_rule(index: int, raw: Any, declarations: Declarations) -> Rule | None:
    if not isinstance(raw, Mapping):
        raise RulesError(f"{_line(raw)}rules[{index}]: must be a mapping with id, when and action")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not NAME.fullmatch(rule_id) or rule_id == MODEL_RULE:
        raise RulesError(f"{_line(raw, 'id')}rules[{index}]: `id` {rule_id!r} must be lower-case letters, digits "
                         f"and _, starting with a letter (at most 64), and not {MODEL_RULE!r}")
    where = f"rule {rule_id}"
    _refuse_unknown(raw, _RULE_KEYS, where)
    when = raw.get("when")
    if not isinstance(when, str) or not when.strip():
        raise RulesError(f"{_line(raw, 'when')}{where}: `when` is required: a CEL expression (docs/rules.md)")
    if "action" not in raw:
        raise RulesError(f"{_line(raw)}{where}: `action` is required: allow, review or block")
    action = _choice(raw, "action", ACTIONS, None, where)
    mode = _choice(raw, "mode", MODES, "live", where)
    severity = _choice(raw, "severity", SEVERITIES, None, where)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RulesError(f"{_line(raw, 'enabled')}{where}: enabled must be true or false")
    try:
        compiled = compile_expression(when, declarations)
    except ExpressionError as exc:
        raise RulesError(f"{_expression_line(raw, exc)}{where}: when: {exc}") from None
    if not enabled:
        return None
    return Rule(rule_id, compiled, action, mode, severity, str(raw.get("description", "")))


def _expression_line(raw: Any, exc: ExpressionError) -> str:
    """The file line of an expression error, when `when` is a plain scalar (else the key's line)."""
    if not isinstance(raw, _Located) or "when" not in raw.value_columns:
        return _line(raw, "when")
    line, _, plain = raw.value_columns["when"]
    return f"line {line + exc.line - 1 if plain else raw.key_lines['when']}: "


def parse_rules(data: Any) -> RuleSet:
    """A rule set from the parsed YAML; raises `RulesError` naming the line, the rule and what to fix."""
    if not isinstance(data, Mapping) or not isinstance(data.get("rules"), list):
        raise RulesError("the rules file must be a mapping with a `rules:` list (docs/rules.md)")
    _refuse_unknown(data, _TOP_KEYS, "rules file")
    aggregates = parse_aggregates(data.get("aggregates") or {})
    lists = _parse_lists(data.get("lists"))
    declarations = Declarations(tuple((a.name, aggregate_type(a.kind)) for a in aggregates), frozenset(lists))
    rules = [_parse_rule(i, raw, declarations) for i, raw in enumerate(data["rules"])]
    ids = [raw.get("id") for raw in data["rules"]]
    duplicates = sorted({str(i) for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RulesError(f"duplicate rule id(s): {', '.join(duplicates)}; each rule needs its own id")
    return RuleSet(tuple(rule for rule in rules if rule is not None), aggregates, lists,
                   _parse_precedence(data.get("precedence")), _parse_bands(data.get("model")))


def load_rules(path: str | Path) -> RuleSet:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader that records lines)
    except FileNotFoundError:
        raise RulesError(f"rules file {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RulesError(f"rules file {path} is not valid YAML: {exc}") from None
    try:
        return parse_rules(data)
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from None
