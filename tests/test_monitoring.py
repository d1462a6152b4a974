"""The monitoring config (monitoring/): Prometheus configs, alert rules and their promtool tests, the dashboard.

promtool checks and unit-tests the real files; the metric names every alert and panel uses are compared with
what the worker really exports (`stream_app.metrics.WorkerMetrics`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.dashboard_queries import (
    DASHBOARD_PATH,
    MONITORING_DIR,
    RULE_PATHS,
    exposition_names,
    is_worker_metric,
    label_values_query,
    load_dashboard,
    metric_names,
    panel_queries,
    render,
    rule_expressions,
    selectors,
    template_variables,
    used_metric_names,
)

PROMETHEUS_CONFIGS = (MONITORING_DIR / "prometheus.yml", MONITORING_DIR / "prometheus.docker.yml")
RULE_TEST_PATHS = tuple(sorted((MONITORING_DIR / "tests").glob("*.yml")))
PROVISIONING = MONITORING_DIR / "grafana" / "provisioning"
SEVERITIES = {"critical", "warning"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run scripts/setup.sh (Debian package `prometheus`)")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout}\n{result.stderr}"


def alerts() -> list[dict[str, Any]]:
    return [r.rule for r in rule_expressions() if r.kind == "alert"]


# ---- promtool ------------------------------------------------------------------------------------------------
def test_rule_files_exist() -> None:
    assert RULE_PATHS, "no monitoring/alerts*.yml rule files"
    assert RULE_TEST_PATHS, "no promtool tests in monitoring/tests/"


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(config: Path) -> None:
    """Both configs are valid and load the rules (relative paths resolve against the config's directory)."""
    result = promtool("check", "config", config)
    assert_ok(result)
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    assert_ok(promtool("check", "rules", *RULE_PATHS))


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *RULE_TEST_PATHS)
    assert_ok(result)
    assert result.stdout.count("SUCCESS") == len(RULE_TEST_PATHS), result.stdout


def test_unit_tests_load_every_rule_file() -> None:
    for path in RULE_TEST_PATHS:
        loaded = {(path.parent / f).resolve() for f in yaml.safe_load(path.read_text())["rule_files"]}
        assert loaded == {p.resolve() for p in RULE_PATHS}, f"{path.name} must load every monitoring/alerts*.yml"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """A new alert without promtool tests breaks the build: it needs a firing and an explicit not-firing case."""
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TEST_PATHS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alerts()}
    problems = [f"{name}: no firing case" for name in sorted(names - firing)]
    problems += [f"{name}: no not-firing case (exp_alerts: [])" for name in sorted(names - silent)]
    problems += [f"{name}: tested but no such alert" for name in sorted((firing | silent) - names)]
    assert not problems, "monitoring/tests/*.yml:\n" + "\n".join(problems)


# ---- rule hygiene --------------------------------------------------------------------------------------------
def test_alerts_have_severity_summary_description_and_sane_for() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in alerts():
        name = rule["alert"]
        assert name.startswith("Fraud"), f"{name}: alert names start with Fraud (the dashboard filters on it)"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity must be one of {SEVERITIES}"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name}: needs a summary"
        assert len(annotations.get("description", "")) > 80, f"{name}: description must say what to check first"
        assert DURATION.match(str(rule.get("for", "0s"))), f"{name}: bad `for` duration"


def test_recording_rules_used_are_defined() -> None:
    """Names with a colon are recording rules: every one an alert or panel uses must be recorded here."""
    recorded = {r.name for r in rule_expressions() if r.kind == "record"}
    used = {n for r in rule_expressions() for n in metric_names(r.expr)}
    used |= {n for q in panel_queries() for n in metric_names(q.expr)}
    assert {n for n in used if ":" in n} <= recorded


# ---- metric names against the worker -------------------------------------------------------------------------
def exported_names() -> set[str]:
    """Sample names a fresh worker's registry exposes (tests/test_monitoring_live.py checks a running worker)."""
    module = pytest.importorskip("stream_app.metrics")
    from prometheus_client import generate_latest

    return exposition_names(generate_latest(module.WorkerMetrics().registry).decode())


def test_every_metric_used_is_exported_by_the_worker() -> None:
    exported = exported_names()
    missing = {name: sorted(where) for name, where in used_metric_names().items()
               if is_worker_metric(name) and name not in exported}
    assert not missing, f"metrics used but not exported by stream_app.metrics.WorkerMetrics: {missing}"


def test_series_the_alerts_rely_on_exist_from_start() -> None:
    """`increase`/`rate` miss the first increment of a series that appears at 1, so the labelled series the
    alerts watch must be exported at 0 before anything happens."""
    module = pytest.importorskip("stream_app.metrics")
    from prometheus_client import generate_latest

    text = generate_latest(module.WorkerMetrics().registry).decode()
    for series in (
        'fraud_events_total{outcome="dead_letter"}', 'fraud_events_total{outcome="scored"}',
        'fraud_decisions_total{action="review",decision="flag"}',
        'fraud_decisions_total{action="block",decision="flag"}',
        'fraud_decisions_total{action="allow",decision="pass"}',
        'fraud_reloads_total{artifact="model",result="refused"}',
        'fraud_reloads_total{artifact="rules",result="refused"}',
        'fraud_degraded_total{cause="redis_unavailable"}', "fraud_latency_budget_exceeded_total ",
        "fraud_input_messages_total ", "fraud_model_flags_total ",
    ):
        assert series in text, f"{series.strip()} must be exported (at 0) from start-up"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (job) (rate(fraud_events_total{outcome="scored"}[5m]))', {"fraud_events_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(x_bucket[$__rate_interval]))) > on (job) max(b)",
         {"x_bucket", "b"}),
        ("a / on (job) group_left sum by (job) (c) > 0.05 and d offset 10m unless absent(up)", {"a", "c", "d", "up"}),
        ("job:rec:rate10m > 3 * job:rec:rate6h and 1e3 < e", {"job:rec:rate10m", "job:rec:rate6h", "e"}),
    ],
)
def test_metric_names_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "found"),
    [
        ('sum by (job) (rate(fraud_events_total{outcome="scored"}[5m])) / sum(rate(fraud_events_total[5m]))',
         {'fraud_events_total{outcome="scored"}', "fraud_events_total"}),
        ('ALERTS{alertstate="firing", alertname=~"Fraud.*"}', {'ALERTS{alertstate="firing", alertname=~"Fraud.*"}'}),
        ("job:a:rate10m > 3 * job:a:rate6h and on (job) up{job='w'} == 0",
         {"job:a:rate10m", "job:a:rate6h", "up{job='w'}"}),
    ],
)
def test_selectors_extraction(expr: str, found: set[str]) -> None:
    assert selectors(expr) == found


def test_exposition_names_map_histograms_and_childless_counters() -> None:
    text = ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1.0\nh_count 1.0\nh_sum 0.1\n"
            "# TYPE c counter\n# TYPE g gauge\ng{x=\"1\"} 2.0\n")
    assert exposition_names(text) == {"h", "h_bucket", "h_count", "h_sum", "c", "c_total", "g"}


# ---- Prometheus configs --------------------------------------------------------------------------------------
def scrape_config(path: Path, job: str = "fraud-worker") -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    return next(s for s in config["scrape_configs"] if s["job_name"] == job)


def test_configs_scrape_the_worker_every_5s_and_load_the_rules() -> None:
    for path in PROMETHEUS_CONFIGS:
        config = yaml.safe_load(path.read_text())
        assert config["rule_files"] == ["alerts*.yml"], path.name
        assert scrape_config(path)["scrape_interval"] == "5s", path.name


def test_local_config_discovers_workers_from_target_files() -> None:
    sd = scrape_config(MONITORING_DIR / "prometheus.yml")["file_sd_configs"]
    assert sd == [{"files": ["targets/*.json"], "refresh_interval": "30s"}]
    targets = [t for f in sorted((MONITORING_DIR / "targets").glob("*.json")) for g in json.loads(f.read_text())
               for t in g["targets"]]
    assert targets == ["127.0.0.1:8000"], "the shipped target is the default worker metrics port"


def test_docker_config_scrapes_the_compose_worker() -> None:
    static = scrape_config(MONITORING_DIR / "prometheus.docker.yml")["static_configs"]
    assert static == [{"targets": ["worker:8000"]}]


def test_local_stack_config_is_monitoring_prometheus_yml_with_its_own_targets(tmp_path: Path) -> None:
    """`fraudmon stack up` writes its Prometheus config from monitoring/prometheus.yml: promtool accepts it, it
    loads every rule file, keeps the scrape settings and scrapes the stack's worker metrics ports."""
    from fraudmon.core.config import load_settings
    from fraudmon.tools.stack import LocalStack

    base = load_settings(environ={})
    settings = base.model_copy(update={"stack": base.stack.model_copy(update={"data_dir": str(tmp_path)})})
    path = LocalStack(settings, worker_metrics_ports=(8123, 8124)).prometheus_config()
    result = promtool("check", "config", path)
    assert_ok(result)
    assert f"SUCCESS: {len(RULE_PATHS)} rule files found" in result.stdout + result.stderr
    generated = yaml.safe_load(path.read_text())
    shipped = yaml.safe_load((MONITORING_DIR / "prometheus.yml").read_text())
    assert generated["global"] == shipped["global"]
    assert sorted(Path(f) for f in generated["rule_files"]) == [MONITORING_DIR / f for f in shipped["rule_files"]]
    job, shipped_job = scrape_config(path), scrape_config(MONITORING_DIR / "prometheus.yml")
    assert {k: v for k, v in job.items() if k != "file_sd_configs"} == {
        k: v for k, v in shipped_job.items() if k != "file_sd_configs"}
    (sd,) = job["file_sd_configs"]
    targets = [t for f in sd["files"] for group in json.loads(Path(f).read_text()) for t in group["targets"]]
    assert targets == ["127.0.0.1:8123", "127.0.0.1:8124"]


# ---- Grafana -------------------------------------------------------------------------------------------------
def datasource_uid() -> str:
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    return datasource["uid"]


def test_dashboard_is_provisioned_with_fixed_uids() -> None:
    """Every panel reads the `$datasource` variable, whose default is the provisioned Prometheus."""
    dashboard = load_dashboard()
    assert dashboard["uid"] == "fraud-monitor"
    assert template_variables()["datasource"]["current"]["value"] == datasource_uid()
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARD_PATH.parent.name == "dashboards"


def test_dashboard_covers_the_required_views() -> None:
    used = {n for q in panel_queries() for n in metric_names(q.expr)}
    for name in ("fraud_events_total", "fraud_decisions_total", "fraud_rule_hits_total", "fraud_model_flags_total",
                 "fraud_shadow_rule_hits_total", "fraud_rule_errors_total", "fraud_rule_verdicts_total",
                 "fraud_end_to_end_seconds_bucket", "fraud_processing_seconds_bucket",
                 "fraud_latency_budget_exceeded_total", "fraud_degraded_total", "fraud_model_info",
                 "fraud_model_score_bucket", "fraud_consumer_lag"):
        assert name in used, f"no panel shows {name}"
    heatmaps = [p for p in load_dashboard()["panels"] if p["type"] == "heatmap"]
    assert any("fraud_model_score_bucket" in t["expr"] and t.get("format") == "heatmap"
               for p in heatmaps for t in p["targets"])


def _panel(title: str) -> list[str]:
    """The queries of the dashboard panel titled `title`."""
    queries = [q.expr for q in panel_queries() if q.panel == title]
    assert queries, f"no panel {title!r}"
    return queries


def _grouping(expr: str) -> list[set[str]]:
    return [{label.strip() for label in labels.split(",")} for labels in re.findall(r"\bby \(([^)]*)\)", expr)]


def test_dashboard_shows_decisions_by_action_and_rules_by_rule_and_action() -> None:
    """Decisions by action; live and shadow rule hits by rule and action; rule errors by rule."""
    for title, metric, labels in [
        ("Decisions/s by action", "fraud_decisions_total", {"action"}),
        ("Rule hits/s by rule and action (live)", "fraud_rule_hits_total", {"rule", "action"}),
        ("Shadow rule hits/s by rule and action", "fraud_shadow_rule_hits_total", {"rule", "action"}),
        ("Rule errors/s by rule", "fraud_rule_errors_total", {"rule"}),
        ("Rule hits by rule and action (last 1h)", "fraud_rule_hits_total", {"rule", "action"}),
    ]:
        (expr,) = _panel(title)
        assert metric_names(expr) == {metric} and _grouping(expr) == [labels], (title, expr)


def test_per_rule_confirmed_precision_is_fraud_over_all_verdicts_of_each_rule() -> None:
    """The panel divides each rule's fraud verdicts by all its verdicts (a rule with only legit ones reads 0), and
    shows how many verdicts that rests on; promtool checks the numbers (monitoring/tests/rules.yml)."""
    precision, count = _panel("Confirmed precision per rule (analyst verdicts, last 7d)")
    assert metric_names(precision) == metric_names(count) == {"fraud_rule_verdicts_total"}
    assert all(by == {"rule"} for by in _grouping(precision)) and _grouping(count) == [{"rule"}]
    assert 'verdict="fraud"' in precision and " or 0 * " in precision and 'verdict="fraud"' not in count
    tested = {case["expr"] for path in RULE_TEST_PATHS for test in yaml.safe_load(path.read_text())["tests"]
              for case in test.get("promql_expr_test", [])}
    assert render(precision, instance="w1:8000") in tested, "monitoring/tests/rules.yml tests the panel's query"


def test_the_rules_row_panels_are_tested_by_promtool() -> None:
    """The rate panels of decisions by action, shadow hits and rule errors, as promtool evaluates them."""
    tested = {case["expr"] for path in RULE_TEST_PATHS for test in yaml.safe_load(path.read_text())["tests"]
              for case in test.get("promql_expr_test", [])}
    for title in ("Decisions/s by action", "Shadow rule hits/s by rule and action", "Rule errors/s by rule"):
        (expr,) = _panel(title)
        assert render(expr, rate_interval="5m", instance="w1:8000") in tested, title


def test_dashboard_variables_pick_the_prometheus_and_the_workers() -> None:
    variables = template_variables()
    assert list(variables) == ["datasource", "instance"], "datasource first: the instance query runs on it"
    datasource, instance = variables["datasource"], variables["instance"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert instance["type"] == "query"
    assert instance["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert label_values_query(instance) == ('up{job="fraud-worker"}', "instance"), "every target, down ones too"
    assert instance["definition"] == instance["query"]
    assert instance["multi"] and instance["includeAll"]
    assert instance["allValue"] == ".*", "All must also match workers that appear after the dashboard loaded"
    assert instance["current"]["value"] == ["$__all"]


# Each selector filters by the `$instance` variable. Fleet-wide alerts have no instance label, so the firing-alerts
# panel also matches an empty one (`$instance|`) to keep them in view when one worker is picked.
INSTANCE_FILTER = re.compile(r'\binstance=~"\$instance\|?"')


def test_every_panel_query_filters_by_instance() -> None:
    unfiltered = [f"{q.panel} [{q.ref_id}]: {s}" for q in panel_queries() for s in selectors(q.expr)
                  if not INSTANCE_FILTER.search(s)]
    assert not unfiltered, "selectors without instance=~\"$instance\":\n" + "\n".join(unfiltered)
    assert all(selectors(q.expr) for q in panel_queries())


def test_workers_up_is_on_the_top_row() -> None:
    panels = [p for p in load_dashboard()["panels"] if p["type"] != "row"]
    top = min(p["gridPos"]["y"] for p in panels)
    (workers_up,) = [p for p in panels if p["title"] == "Workers up"]
    assert workers_up["gridPos"]["y"] == top and workers_up["gridPos"]["x"] == 0
    top_row = [p for p in panels if p["gridPos"]["y"] == top]
    assert sum(p["gridPos"]["w"] for p in top_row) == 24, "the top row fills the width"


def test_every_panel_query_renders_to_plain_promql() -> None:
    for query in panel_queries():
        assert "$" not in render(query.expr), query
    assert render('up{instance=~"$instance"}', instance="w1:8000") == 'up{instance=~"w1:8000"}'


def test_worker_serves_metrics_on_the_configured_address() -> None:
    """`worker.metrics_address` is where /metrics listens: bound to 127.0.0.2, it does not answer on 127.0.0.1."""
    import urllib.request

    from fraudmon.tools.stack import free_port
    from stream_app.metrics import WorkerMetrics

    port = free_port()
    WorkerMetrics().serve(port, "127.0.0.2")
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5) as response:
        assert "fraud_reloads_total" in response.read().decode()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
