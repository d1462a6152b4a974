"""Declarative rules (SPEC: Rules): parsing `config/rules.yaml` and judging one event against its prior state.

Pure and synchronous. `evaluate` sees the account's state *before* the event (`AccountState`), or `None` when
the state store is unavailable, in which case only the stateless rules run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from fraudmon.errors import RulesError
from stream_app.schema import Event

SEVERITIES = {"low": 1, "medium": 2, "high": 3}
STATELESS_TYPES = {"amount_over", "new_account_amount"}
PARAMETERS: dict[str, dict[str, type]] = {
    "velocity": {"max_count": int, "window": str},
    "new_country": {"min_history": int},
    "ip_fanout": {"max_accounts": int, "window": str},
    "new_counterparty_amount": {"min_amount": float},
    "new_account_amount": {"max_age": str, "min_amount": float},
    "amount_zscore": {"z": float, "min_history": int},
    "amount_over": {"limit": float},
    "duplicate_transaction_id": {},
}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DEFAULT_HISTORY_TTL_MS = 30 * UNIT_MS["d"]


def parse_duration_ms(text: Any, where: str) -> int:
    match = DURATION.match(str(text).strip())
    if not match:
        raise RulesError(f"{where}: {text!r} is not a duration (use e.g. 500ms, 60s, 10m, 1h, 1d)")
    return int(float(match.group(1)) * UNIT_MS[match.group(2)])


@dataclass(frozen=True)
class Rule:
    id: str
    type: str
    severity: str
    enabled: bool
    params: dict[str, Any]


@dataclass(frozen=True)
class RuleHit:
    id: str
    type: str
    severity: str
    detail: str


@dataclass(frozen=True)
class AccountState:
    """What the rules know about an event's account and IP before the event."""

    prior_count: int = 0
    velocity_counts: dict[int, int] = field(default_factory=dict)  # window ms -> earlier tx in (ts - window, ts]
    fanout_counts: dict[int, int] = field(default_factory=dict)  # window ms -> distinct accounts incl. this one
    country_seen: bool = True
    known_countries: tuple[str, ...] = ()
    counterparty_seen: bool = True
    amount_count: int = 0
    amount_mean: float = 0.0
    amount_std: float = 0.0
    replayed: bool = False
    id_reused: bool = False  # the transaction id was seen before with other content


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    flag_severity: str = "high"
    history_ttl_ms: int = DEFAULT_HISTORY_TTL_MS

    @cached_property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.enabled)

    @property
    def stateful(self) -> bool:
        return any(rule.type not in STATELESS_TYPES for rule in self.enabled)

    @property
    def velocity_windows_ms(self) -> tuple[int, ...]:
        return tuple(sorted({r.params["window_ms"] for r in self.enabled if r.type == "velocity"}))

    @property
    def fanout_windows_ms(self) -> tuple[int, ...]:
        return tuple(sorted({r.params["window_ms"] for r in self.enabled if r.type == "ip_fanout"}))


def _parse_rule(index: int, raw: Any) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(f"rules[{index}]: must be a mapping with id, type, severity and parameters")
    where = f"rule {raw.get('id', f'#{index}')!s}"
    for key in ("id", "type"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            raise RulesError(f"{where}: `{key}` is required and must be a string")
    rule_type = raw["type"]
    if rule_type not in PARAMETERS:
        raise RulesError(f"{where}: unknown type {rule_type!r}; use one of {', '.join(PARAMETERS)}")
    severity = raw.get("severity", "high")
    if severity not in SEVERITIES:
        raise RulesError(f"{where}: severity {severity!r} must be low, medium or high")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RulesError(f"{where}: enabled must be true or false")
    expected = PARAMETERS[rule_type]
    unknown = set(raw) - set(expected) - {"id", "type", "severity", "enabled", "description"}
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for type {rule_type}")
    params: dict[str, Any] = {}
    for name, kind in expected.items():
        if name not in raw:
            raise RulesError(f"{where}: parameter `{name}` is required for type {rule_type}")
        value = raw[name]
        if kind is str:
            params[name + "_ms"] = parse_duration_ms(value, f"{where}: {name}")
            params[name] = str(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
            raise RulesError(f"{where}: `{name}` must be a {'whole number' if kind is int else 'number'}")
        if value < 0 or not math.isfinite(value):
            raise RulesError(f"{where}: `{name}` must be a finite number >= 0")
        params[name] = kind(value)
    return Rule(raw["id"], rule_type, severity, enabled, params)


def parse_rules(data: Any) -> RuleSet:
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise RulesError("rules file must be a mapping with a `rules:` list")
    flag_severity = data.get("flag_severity", "high")
    if flag_severity not in SEVERITIES:
        raise RulesError(f"flag_severity {flag_severity!r} must be low, medium or high")
    rules = tuple(_parse_rule(i, raw) for i, raw in enumerate(data["rules"]))
    ids = [rule.id for rule in rules]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RulesError(f"duplicate rule id(s): {', '.join(duplicates)}; each rule needs its own id")
    ttl = data.get("state", {}).get("history_ttl", "30d") if isinstance(data.get("state"), dict) else "30d"
    return RuleSet(rules, flag_severity, parse_duration_ms(ttl, "state.history_ttl"))


def load_rules(path: str | Path) -> RuleSet:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RulesError(f"rules file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"rules file {path} is not valid YAML: {exc}") from None
    try:
        return parse_rules(data)
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from None


def _check(rule: Rule, event: Event, state: AccountState | None) -> str | None:
    """The hit's detail when `rule` fires on `event`, else None."""
    p = rule.params
    if rule.type == "amount_over":
        return f"amount {event.amount:.2f} over the limit {p['limit']:.2f}" if event.amount > p["limit"] else None
    if rule.type == "new_account_amount":
        if event.account_created_ms is None or event.amount < p["min_amount"]:
            return None
        age_ms = event.timestamp_ms - event.account_created_ms
        if age_ms < p["max_age_ms"]:
            return f"account {age_ms / 3_600_000:.1f}h old (under {p['max_age']}) pays {event.amount:.2f}"
        return None
    if state is None:
        return None
    if rule.type == "velocity":
        count = state.velocity_counts.get(p["window_ms"], 0) + 1
        return f"{count} transactions in {p['window']} (max {p['max_count']})" if count > p["max_count"] else None
    if rule.type == "new_country":
        if event.country and not state.country_seen and state.prior_count >= p["min_history"]:
            usual = ", ".join(state.known_countries) or "none"
            return f"first transaction from {event.country}; usual: {usual}"
        return None
    if rule.type == "ip_fanout":
        accounts = state.fanout_counts.get(p["window_ms"], 0)
        if event.ip and accounts > p["max_accounts"]:
            return f"IP {event.ip} used by {accounts} accounts in {p['window']} (max {p['max_accounts']})"
        return None
    if rule.type == "new_counterparty_amount":
        if event.counterparty_id and not state.counterparty_seen and event.amount >= p["min_amount"]:
            return f"{event.amount:.2f} to never-paid counterparty {event.counterparty_id}"
        return None
    if rule.type == "duplicate_transaction_id":
        return "transaction id seen before with other content" if state.id_reused else None
    if rule.type == "amount_zscore":
        if state.amount_count < p["min_history"]:
            return None
        std = max(state.amount_std, 1e-6 + 0.01 * abs(state.amount_mean))
        z = (event.amount - state.amount_mean) / std
        if z > p["z"]:
            return f"amount {event.amount:.2f} is {z:.1f} std above the account mean {state.amount_mean:.2f}"
        return None
    raise RulesError(f"rule {rule.id}: no evaluator for type {rule.type}")


def evaluate(ruleset: RuleSet, event: Event, state: AccountState | None) -> list[RuleHit]:
    """Every enabled rule that fires on `event`, judged against the state before it."""
    hits = []
    for rule in ruleset.enabled:
        detail = _check(rule, event, state)
        if detail is not None:
            hits.append(RuleHit(rule.id, rule.type, rule.severity, detail))
    return hits


def flagging_rules(ruleset: RuleSet, hits: list[RuleHit]) -> list[str]:
    """Ids of the hits at or above the rule set's `flag_severity`: the rules that make the decision a flag."""
    floor = SEVERITIES[ruleset.flag_severity]
    return [hit.id for hit in hits if SEVERITIES[hit.severity] >= floor]
