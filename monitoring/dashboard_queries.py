"""The PromQL that the alert rules and the Grafana dashboard run, as data the tests can check and execute.

`panel_queries()` lists every dashboard panel's queries, `render()` replaces Grafana's variables so a query can
be sent to Prometheus' HTTP API as is, `template_variables()` and `label_values_query()` read the dashboard's
variables, `rule_expressions()` lists the alert and recording rules,
`metric_names()` and `selectors()` pull the metric names and series selectors out of an expression, and
`exposition_names()` lists the sample names a /metrics page exposes (to compare the two).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MONITORING_DIR = Path(__file__).resolve().parent
DASHBOARD_PATH = MONITORING_DIR / "grafana" / "dashboards" / "fraud-monitor.json"
RULE_PATHS = tuple(sorted(MONITORING_DIR.glob("alerts*.yml")))

# Series Prometheus itself creates: not exported by the worker.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds",
                               "scrape_samples_scraped"})

_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+|@\s*[-+0-9.a-z()]+", re.IGNORECASE)
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-f]+|\d+\.?\d*(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)", re.IGNORECASE)
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class PanelQuery:
    """One query (Grafana target) of one dashboard panel."""

    panel: str
    ref_id: str
    expr: str
    instant: bool

    def rendered(self, rate_interval: str = "1m", instance: str = ".*") -> str:
        return render(self.expr, rate_interval=rate_interval, instance=instance)


@dataclass(frozen=True)
class RuleExpression:
    """One alerting or recording rule: `name` is the alert name or the recorded series name."""

    name: str
    kind: str  # "alert" or "record"
    expr: str
    rule: dict[str, Any]


def _walk_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))  # panels inside collapsed rows


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict[str, Any]:
    return json.loads(path.read_text())


def panel_queries(path: Path = DASHBOARD_PATH) -> list[PanelQuery]:
    """Every PromQL target of every panel, in dashboard order."""
    queries = []
    for panel in _walk_panels(load_dashboard(path)["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append(PanelQuery(panel["title"], target["refId"], target["expr"],
                                          bool(target.get("instant")) and not target.get("range")))
    return queries


def render(expr: str, rate_interval: str = "1m", interval: str = "15s", range_: str = "1h",
           instance: str = ".*") -> str:
    """Replace Grafana's built-in variables with fixed durations and `$instance` with a regex (`.*` is the
    dashboard's All), giving plain PromQL for /api/v1/query."""
    values = {"__rate_interval": rate_interval, "__interval": interval, "__range": range_, "instance": instance}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(0).strip("${}")
        if name not in values:
            raise ValueError(f"dashboard query uses ${name}, which render() does not know: {expr}")
        return values[name]

    return _VARIABLE.sub(substitute, expr)


def template_variables(path: Path = DASHBOARD_PATH) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {variable["name"]: variable for variable in load_dashboard(path)["templating"]["list"]}


def label_values_query(variable: dict[str, Any]) -> tuple[str, str]:
    """The series selector and the label of a `label_values(selector, label)` query variable."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"].strip())
    if match is None:
        raise ValueError(f"variable {variable['name']} is not label_values(selector, label): {variable['query']}")
    return match.group(1).strip(), match.group(2)


def rule_expressions(paths: Iterable[Path] = RULE_PATHS) -> list[RuleExpression]:
    """Every rule of every group in the rule files."""
    rules = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                kind = "alert" if "alert" in rule else "record"
                rules.append(RuleExpression(rule[kind], kind, str(rule["expr"]), rule))
    return rules


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, labels, durations or numbers)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        followed_by_paren = text[match.end():].lstrip().startswith("(")
        if followed_by_paren or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def selectors(expr: str) -> set[str]:
    """Series selectors of an expression: each metric name with its label matchers as written, e.g.
    `fraud_events_total{outcome="scored"}` (no ranges, offsets or functions), to run as queries of their own."""
    found = set()
    for name in metric_names(expr):
        pattern = re.compile(rf"(?<![\w:]){re.escape(name)}(?![\w:])\s*(\{{[^}}]*\}})?(?!\s*\()")
        found |= {name + (m.group(1) or "") for m in pattern.finditer(expr)}
    return found


def exposition_names(text: str) -> set[str]:
    """Sample names a Prometheus text exposition (a /metrics page) offers for queries: the samples' own names,
    plus `_bucket`/`_sum`/`_count` of histograms and `_total` of counters declared without children yet."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {f"{name}_sum", f"{name}_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Every series name the alert rules and the dashboard select, with where each is used (Prometheus' own
    series such as `up` and recorded series, whose names have a colon, included)."""
    used: dict[str, set[str]] = {}
    for rule in rule_expressions():
        for name in metric_names(rule.expr):
            used.setdefault(name, set()).add(f"rule {rule.name}")
    for panel in panel_queries():
        for name in metric_names(panel.expr):
            used.setdefault(name, set()).add(f"panel {panel.panel!r}")
    return used


def is_worker_metric(name: str) -> bool:
    """False for Prometheus' own series and for recorded series (the worker exports neither)."""
    return name not in PROMETHEUS_SERIES and ":" not in name
