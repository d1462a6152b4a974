"""Declarative rules (SPEC: Rules): parsing `config/rules.yaml` and judging one event against its prior state.

Pure and synchronous. `evaluate` sees the account's state *before* the event (`AccountState`), or `None` when
the state store is unavailable, in which case only the stateless rules run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError

from fraudmon.core.errors import RulesError
from fraudmon.core.events import Event

SEVERITIES = {"low": 1, "medium": 2, "high": 3}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DEFAULT_HISTORY_TTL_MS = 30 * UNIT_MS["d"]


def parse_duration_ms(text: Any, where: str) -> int:
    match = DURATION.match(str(text).strip())
    if not match:
        raise RulesError(f"{where}: {text!r} is not a duration (use e.g. 500ms, 60s, 10m, 1h, 1d)")
    return int(float(match.group(1)) * UNIT_MS[match.group(2)])


class Duration(int):
    """A window or age written as `500ms`, `60s`, `10m`, `1h` or `1d`, held in milliseconds; `text` keeps what
    was written, for the hit's detail."""

    text: str

    def __new__(cls, written: Any) -> Duration:
        match = DURATION.match(str(written).strip())
        if not match:
            raise ValueError(f"{written!r} is not a duration (use e.g. 500ms, 60s, 10m, 1h, 1d)")
        value = super().__new__(cls, int(float(match.group(1)) * UNIT_MS[match.group(2)]))
        value.text = str(written).strip()
        return value


DurationField = Annotated[Duration, BeforeValidator(lambda v: v if isinstance(v, Duration) else Duration(v))]
Count = Annotated[StrictInt, Field(ge=0)]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=False)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class VelocityParams(_Params):
    max_count: Count
    window: DurationField


class NewCountryParams(_Params):
    min_history: Count


class IpFanoutParams(_Params):
    max_accounts: Count
    window: DurationField


class NewCounterpartyParams(_Params):
    min_amount: Amount


class NewAccountParams(_Params):
    max_age: DurationField
    min_amount: Amount


class ZscoreParams(_Params):
    z: Amount
    min_history: Count


class AmountOverParams(_Params):
    limit: Amount


class NoParams(_Params):
    pass


@dataclass(frozen=True)
class Rule:
    id: str
    type: str
    severity: str
    enabled: bool
    params: Any  # the type's parameter model


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


Check = Callable[[Any, Event, AccountState | None], str | None]


class RuleType(NamedTuple):
    """One rule type: its parameters, whether it needs the account's state, and its check (the hit's detail, or
    None when it does not fire)."""

    params: type[_Params]
    stateful: bool
    check: Check


RULE_TYPES: dict[str, RuleType] = {}


def rule_type(name: str, params: type[_Params], stateful: bool = True) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        RULE_TYPES[name] = RuleType(params, stateful, check)
        return check
    return register


@rule_type("amount_over", AmountOverParams, stateful=False)
def _amount_over(p: AmountOverParams, event: Event, state: AccountState | None) -> str | None:
    return f"amount {event.amount:.2f} over the limit {p.limit:.2f}" if event.amount > p.limit else None


@rule_type("new_account_amount", NewAccountParams, stateful=False)
def _new_account_amount(p: NewAccountParams, event: Event, state: AccountState | None) -> str | None:
    if event.account_created_ms is None or event.amount < p.min_amount:
        return None
    age_ms = event.timestamp_ms - event.account_created_ms
    if age_ms < p.max_age:
        return f"account {age_ms / 3_600_000:.1f}h old (under {p.max_age.text}) pays {event.amount:.2f}"
    return None


@rule_type("velocity", VelocityParams)
def _velocity(p: VelocityParams, event: Event, state: AccountState) -> str | None:
    count = state.velocity_counts.get(p.window, 0) + 1
    return f"{count} transactions in {p.window.text} (max {p.max_count})" if count > p.max_count else None


@rule_type("new_country", NewCountryParams)
def _new_country(p: NewCountryParams, event: Event, state: AccountState) -> str | None:
    if event.country and not state.country_seen and state.prior_count >= p.min_history:
        return f"first transaction from {event.country}; usual: {', '.join(state.known_countries) or 'none'}"
    return None


@rule_type("ip_fanout", IpFanoutParams)
def _ip_fanout(p: IpFanoutParams, event: Event, state: AccountState) -> str | None:
    accounts = state.fanout_counts.get(p.window, 0)
    if event.ip and accounts > p.max_accounts:
        return f"IP {event.ip} used by {accounts} accounts in {p.window.text} (max {p.max_accounts})"
    return None


@rule_type("new_counterparty_amount", NewCounterpartyParams)
def _new_counterparty(p: NewCounterpartyParams, event: Event, state: AccountState) -> str | None:
    if event.counterparty_id and not state.counterparty_seen and event.amount >= p.min_amount:
        return f"{event.amount:.2f} to never-paid counterparty {event.counterparty_id}"
    return None


@rule_type("duplicate_transaction_id", NoParams)
def _duplicate_id(p: NoParams, event: Event, state: AccountState) -> str | None:
    return "transaction id seen before with other content" if state.id_reused else None


@rule_type("amount_zscore", ZscoreParams)
def _amount_zscore(p: ZscoreParams, event: Event, state: AccountState) -> str | None:
    if state.amount_count < p.min_history:
        return None
    std = max(state.amount_std, 1e-6 + 0.01 * abs(state.amount_mean))
    z = (event.amount - state.amount_mean) / std
    if z > p.z:
        return f"amount {event.amount:.2f} is {z:.1f} std above the account mean {state.amount_mean:.2f}"
    return None


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    flag_severity: str = "high"
    history_ttl_ms: int = DEFAULT_HISTORY_TTL_MS

    @cached_property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.enabled)

    @cached_property
    def stateful(self) -> bool:
        return any(RULE_TYPES[rule.type].stateful for rule in self.enabled)

    @cached_property
    def velocity_windows_ms(self) -> tuple[int, ...]:
        return tuple(sorted({int(r.params.window) for r in self.enabled if r.type == "velocity"}))

    @cached_property
    def fanout_windows_ms(self) -> tuple[int, ...]:
        return tuple(sorted({int(r.params.window) for r in self.enabled if r.type == "ip_fanout"}))


_RULE_KEYS = {"id", "type", "severity", "enabled", "description"}


def _parse_rule(index: int, raw: Any) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(f"rules[{index}]: must be a mapping with id, type, severity and parameters")
    where = f"rule {raw.get('id', f'#{index}')!s}"
    for key in ("id", "type"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            raise RulesError(f"{where}: `{key}` is required and must be a string")
    rule_type_ = raw["type"]
    if rule_type_ not in RULE_TYPES:
        raise RulesError(f"{where}: unknown type {rule_type_!r}; use one of {', '.join(RULE_TYPES)}")
    severity = raw.get("severity", "high")
    if severity not in SEVERITIES:
        raise RulesError(f"{where}: severity {severity!r} must be low, medium or high")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RulesError(f"{where}: enabled must be true or false")
    model = RULE_TYPES[rule_type_].params
    unknown = set(raw) - set(model.model_fields) - _RULE_KEYS
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for type {rule_type_}")
    try:
        params = model.model_validate({k: v for k, v in raw.items() if k not in _RULE_KEYS})
    except ValidationError as exc:
        raise RulesError(f"{where}: {_param_problem(exc, rule_type_)}") from None
    return Rule(raw["id"], rule_type_, severity, enabled, params)


def _param_problem(exc: ValidationError, rule_type_: str) -> str:
    error = exc.errors()[0]
    name = ".".join(str(p) for p in error["loc"])
    if error["type"] == "missing":
        return f"parameter `{name}` is required for type {rule_type_}"
    if error["type"] in ("int_type", "int_from_float"):
        return f"`{name}` must be a whole number"
    if error["type"] in ("greater_than_equal", "finite_number"):
        return f"`{name}` must be a finite number >= 0"
    return f"`{name}`: {error['msg'].removeprefix('Value error, ')}"


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


def evaluate(ruleset: RuleSet, event: Event, state: AccountState | None) -> list[RuleHit]:
    """Every enabled rule that fires on `event`, judged against the state before it."""
    hits = []
    for rule in ruleset.enabled:
        spec = RULE_TYPES[rule.type]
        if spec.stateful and state is None:
            continue
        detail = spec.check(rule.params, event, state)
        if detail is not None:
            hits.append(RuleHit(rule.id, rule.type, rule.severity, detail))
    return hits
