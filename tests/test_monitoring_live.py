"""The dashboard and the alerts on a real Prometheus scraping a real worker under a simulated stream.

Grafana cannot run here, so every panel's PromQL is sent to Prometheus' HTTP API the way Grafana would send it
(`$__rate_interval` rendered as 20s: 4 x the 5 s scrape interval, Grafana's value for the provisioned
datasource; `$instance` as All and as the worker picked alone): each query must be valid and return at least one
finite number. The rules must load and evaluate
without errors, every series selector of every rule and panel must match a real series, and every metric name
must be on the worker's own /metrics. An alert is made to fire for real (a refused rules reload) so the
"Firing alerts" panel has something to show.

The worker runs the shipped rules plus two probes, so that the rules panels have series: a shadow rule that fires
often and a rule that fails on ATM withdrawals (they carry no feature V14). Analysts' verdicts go to flagged
decisions on which a live rule fired, for the per-rule confirmed precision.

One worker and one 25-second stream serve all tests of this module (about 45 s in all).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer

from fraudmon.core.config import Settings
from fraudmon.tools.harness import wait_for_group
from fraudmon.tools.produce import ProduceSummary, produce_events
from fraudmon.tools.stack import create_topics
from monitoring.dashboard_queries import (
    RULE_PATHS,
    exposition_names,
    is_worker_metric,
    label_values_query,
    panel_queries,
    render,
    rule_expressions,
    selectors,
    template_variables,
    used_metric_names,
)
from training.simulate import SimulationConfig, simulate

from .conftest import WorkerProcess

pytestmark = pytest.mark.integration

RATE_INTERVAL = "20s"
STREAM_S = 25
MALFORMED = 10
PROBE_RULES = [
    {"id": "monitoring_shadow_probe", "when": "event.amount > 20.0", "action": "block", "mode": "shadow"},
    {"id": "monitoring_error_probe", "when": 'event.channel == "atm" && event.features["V14"] < -10.0',
     "action": "review"},
]


@dataclass
class Live:
    prometheus_url: str
    worker: WorkerProcess
    summary: ProduceSummary
    metrics_text: str


def query(prometheus_url: str, promql: str, range_s: float | None = None) -> dict:
    if range_s is None:
        url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    else:
        end = time.time()
        url = f"{prometheus_url}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": promql, "start": end - range_s, "end": end, "step": "5s"})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400 on a bad query: return Prometheus' own error
        return json.loads(exc.read())


def wait_for(prometheus_url: str, promql: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = query(prometheus_url, promql)
        if answer.get("data", {}).get("result") or time.monotonic() > deadline:
            return answer
        time.sleep(1.0)


def finite_values(answer: dict) -> list[float]:
    """Every finite sample of an instant or range query answer (NaN from 0/0 or an empty histogram is no data)."""
    values = []
    for series in answer["data"]["result"]:
        samples = series.get("values") or [series["value"]]
        values += [float(v) for _, v in samples if math.isfinite(float(v))]
    return values


@pytest.fixture(scope="module")
def live(prometheus_url: str, kafka_bootstrap: str, settings: Settings, worker_metrics_port: int,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A worker on the port the test Prometheus scrapes, fed a simulated stream (with fraud scenarios and
    malformed messages), then a broken rules file it must refuse."""
    home: Path = tmp_path_factory.mktemp("monitoring-live")
    run = uuid.uuid4().hex[:8]
    topics = {name: f"{name}-{run}" for name in ("transactions", "scores", "flagged", "dead_letter", "verdicts")}
    create_topics(kafka_bootstrap, list(topics.values()), 6)
    rules = home / "rules.yaml"
    shipped = yaml.safe_load(settings.resolve(settings.worker.rules_path).read_text())
    rules.write_text(yaml.safe_dump({**shipped, "rules": shipped["rules"] + PROBE_RULES}, sort_keys=False))
    group = f"monitoring-live-{run}"
    worker = WorkerProcess(settings, topics, group, worker_metrics_port,
                           {"FRAUDMON_RULES": str(rules), "FRAUDMON_WORKER__METRICS_ADDRESS": "127.0.0.1"},
                           home / "worker.log")
    try:
        try:
            wait_for_group(settings, group, timeout_s=90)
        except Exception as exc:
            raise AssertionError(f"worker did not join its group ({exc}); log:\n{worker.log()[-3000:]}") from None
        events, _ = simulate(SimulationConfig(
            n_events=200 * STREAM_S, n_accounts=1500, start=datetime.now(UTC),
            duration=timedelta(seconds=STREAM_S), fraud_rate=0.02, seed=5))
        summary = produce_events(settings, events, topic=topics["transactions"], rate=200, duration=STREAM_S,
                                 live_time=True, malformed=MALFORMED)
        post_verdicts(settings, topics)
        rules.write_text("rules: [{id: broken, type: teleport}]\n")  # refused by the worker: FraudReloadRefused
        url = prometheus_url
        scraped = wait_for(url, f'fraud_events_total{{outcome="dead_letter"}} >= {MALFORMED}', 60)
        assert scraped["data"]["result"], f"Prometheus never saw the dead letters; worker log:\n{worker.log()[-3000:]}"
        wait_for(url, 'ALERTS{alertname="FraudReloadRefused", alertstate="firing"}', 60)
        wait_for(url, "instance:fraud_model_flag_share:rate15m", 30)
        wait_for(url, 'fraud_verdicts_total{decision="flag"} > 0', 60)
        wait_for(url, "fraud_rule_verdicts_total > 0", 60)
        wait_for(url, "fraud_rule_errors_total > 0", 30)
        wait_for(url, "fraud_feature_psi", 30)
        yield Live(url, worker, summary, worker.metrics_text())
    finally:
        worker.stop()


def post_verdicts(settings: Settings, topics: dict[str, str]) -> None:
    """An analyst confirms the first flag a live rule fired on as fraud and calls the second legitimate
    (`fraudmon label`)."""
    consumer = KafkaConsumer(topics["flagged"], bootstrap_servers=settings.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    decisions = [json.loads(record.value) for record in consumer]
    consumer.close()
    flagged = [d["transaction_id"] for d in decisions if d["rules"]][:2]
    assert len(flagged) == 2, (f"the simulated stream holds frauds, so live rules fire on some of the "
                               f"{len(decisions)} flagged decisions")
    env = {**os.environ, "FRAUDMON_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers,
           "FRAUDMON_REDIS_URL": settings.redis.url, "FRAUDMON_TOPICS__VERDICTS": topics["verdicts"]}
    for tx, label in zip(flagged, ("--fraud", "--legit"), strict=True):
        result = subprocess.run([sys.executable, "-m", "fraudmon.cli", "label", tx, label], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_verdicts_and_feature_drift_reach_prometheus(live: Live) -> None:
    """The series of the lifecycle alerts (FraudConfirmedPrecisionDrop, FraudFeatureDrift) on the real Prometheus."""
    verdicts = query(live.prometheus_url, 'sum by (verdict) (fraud_verdicts_total{decision="flag"})')
    assert {r["metric"]["verdict"]: float(r["value"][1]) for r in verdicts["data"]["result"]} == \
        {"fraud": 1.0, "legit": 1.0}
    by_rule = query(live.prometheus_url, "sum by (verdict) (fraud_rule_verdicts_total)")["data"]["result"]
    assert {r["metric"]["verdict"] for r in by_rule} == {"fraud", "legit"}, "each verdict counts for its rules"
    psi = query(live.prometheus_url, "fraud_feature_psi")["data"]["result"]
    features = {r["metric"]["feature"] for r in psi}
    assert "amount_log" in features and "hour_sin" not in features  # no PSI for the clock features


def test_the_stream_was_delivered(live: Live) -> None:
    assert live.summary.delivered == 200 * STREAM_S + MALFORMED and live.summary.failed == 0


def test_refused_reload_fires_its_alert_on_the_real_prometheus(live: Live) -> None:
    answer = query(live.prometheus_url, 'ALERTS{alertname="FraudReloadRefused", alertstate="firing"}')
    assert [r["metric"]["artifact"] for r in answer["data"]["result"]] == ["rules"]


def test_metrics_listen_only_on_the_configured_address(live: Live) -> None:
    """The worker runs with worker.metrics_address 127.0.0.1: Prometheus scrapes it there, 127.0.0.2 is refused."""
    assert "fraud_reloads_total" in live.metrics_text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.2:{live.worker.metrics_port}/metrics", timeout=5)


def test_instance_variable_lists_the_worker(live: Live) -> None:
    """The dashboard's $instance choices, asked the way Grafana asks (label values of the variable's selector)."""
    selector, label = label_values_query(template_variables()["instance"])
    url = f"{live.prometheus_url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})
    with urllib.request.urlopen(url, timeout=10) as response:
        assert f"127.0.0.1:{live.worker.metrics_port}" in json.loads(response.read())["data"]


def test_rule_files_load_and_every_rule_evaluates_without_error(live: Live) -> None:
    """Prometheus loaded monitoring/alerts*.yml and evaluates every rule cleanly on real series (a
    many-to-many match or a label clash only shows up here, on real data)."""
    expected = {r.name for r in rule_expressions()}
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen(f"{live.prometheus_url}/api/v1/rules", timeout=10) as response:
            groups = json.loads(response.read())["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if all(rule["health"] != "unknown" for rule in rules) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {Path(group["file"]).resolve() for group in groups} == {p.resolve() for p in RULE_PATHS}
    assert {rule["name"] for rule in rules} == expected
    broken = [f"{rule['name']}: {rule['health']} {rule.get('lastError', '')}" for rule in rules
              if rule["health"] != "ok" or rule.get("lastError")]
    assert not broken, "\n".join(broken)


def test_every_metric_used_is_on_the_running_workers_metrics(live: Live) -> None:
    """Renaming a metric in stream_app/metrics.py without updating monitoring/ breaks this test."""
    exposed = exposition_names(live.metrics_text)
    used = used_metric_names()
    missing = {name: sorted(where) for name, where in used.items() if is_worker_metric(name) and name not in exposed}
    assert not missing, f"used by monitoring/ but not on the worker's /metrics: {missing}"
    assert len(used) >= 20


def test_every_selector_matches_real_series(live: Live) -> None:
    """Each metric-plus-label-matchers selector of each rule and panel finds series on the real Prometheus: a
    label value that the worker never exports (outcome="scored", decision="flag", job="fraud-worker") fails."""
    found = {s for r in rule_expressions() for s in selectors(r.expr)}
    found |= {render(s) for p in panel_queries() for s in selectors(p.expr)}
    empty = [s for s in sorted(found) if not query(live.prometheus_url, f"count({s})")["data"]["result"]]
    assert not empty, f"selectors with no series on Prometheus: {empty}"


@pytest.mark.parametrize("instance", ["all", "this worker"])
def test_every_panel_query_is_valid_and_returns_data(live: Live, instance: str) -> None:
    """With $instance at All (`.*`) and at this worker alone, the way Grafana escapes a picked value."""
    regex = ".*" if instance == "all" else f"127\\\\.0\\\\.0\\\\.1:{live.worker.metrics_port}"
    failures, checked = [], 0
    for panel in panel_queries():
        promql = panel.rendered(rate_interval=RATE_INTERVAL, instance=regex)
        answer = query(live.prometheus_url, promql, range_s=None if panel.instant else 180)
        checked += 1
        if answer.get("status") != "success":
            failures.append(f"{panel.panel} [{panel.ref_id}] invalid: {answer.get('error')}: {promql}")
        elif not finite_values(answer):
            failures.append(f"{panel.panel} [{panel.ref_id}] returned no data: {promql}")
    assert checked == len(panel_queries()) >= 20
    assert not failures, "\n".join(failures)


def test_panels_show_what_the_stream_did(live: Live) -> None:
    """Beyond "some data": the series a user looks for are there."""
    url = live.prometheus_url

    def labels(promql: str, label: str) -> set[str]:
        return {r["metric"].get(label, "") for r in query(url, promql)["data"]["result"]}

    assert labels('sum by (outcome) (fraud_events_total) > 0', "outcome") == {"scored", "dead_letter"}
    assert labels("sum by (decision) (fraud_decisions_total) > 0", "decision") == {"flag", "pass"}
    assert labels("sum by (action) (fraud_decisions_total) > 0", "action") >= {"allow", "review"}
    assert "monitoring_shadow_probe" in labels("sum by (rule) (fraud_shadow_rule_hits_total) > 0", "rule")
    assert labels("sum by (rule) (fraud_rule_errors_total) > 0", "rule") == {"monitoring_error_probe"}
    assert labels("sum by (rule) (fraud_rule_hits_total) > 0", "rule"), "the fraud scenarios hit some rule"
    buckets = labels("sum by (le) (fraud_model_score_bucket) > 0", "le")
    assert len(buckets) >= 5, f"the score heatmap needs a spread of buckets: {sorted(buckets)}"
    (info,) = query(url, "fraud_model_info")["data"]["result"]
    assert info["metric"]["version"] and info["metric"]["name"]
