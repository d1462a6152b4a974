"""The dashboard and the alerts on a real Prometheus scraping a real worker under a simulated stream.

Grafana cannot run here, so every panel's PromQL is sent to Prometheus' HTTP API the way Grafana would send it
(`$__rate_interval` rendered as 1m): each query must be valid and return data. An alert is made to fire for real
(a refused rules reload) so the "Firing alerts" panel has something to show.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from fraudmon.produce import produce_events
from monitoring.dashboard_queries import panel_queries
from training.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.integration

# Queries that read history older than a fresh test Prometheus has: the 6-hour flag-ratio baseline is taken
# `offset 10m`. They are still executed and must be valid; they cannot return data in a 2-minute-old server.
NEEDS_OLD_HISTORY = ("job:fraud_flag_ratio:rate6h_offset10m",)


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


def test_every_panel_query_returns_data_from_a_live_worker(
    prometheus_url, settings, worker_metrics_port, worker_topics, start_worker, tmp_path
):
    rules = tmp_path / "rules.yaml"
    rules.write_text(settings.resolve(settings.worker.rules_path).read_text())
    start_worker(worker_topics, metrics_port=worker_metrics_port, env={"FRAUDMON_RULES": str(rules)})
    events, _ = simulate(SimulationConfig(n_events=6000, n_accounts=1500, start=datetime.now(UTC),
                                          duration=timedelta(seconds=30), fraud_rate=0.02, seed=5))
    summary = produce_events(settings, events, topic=worker_topics["transactions"], rate=200, duration=30,
                             live_time=True, malformed=10)
    assert summary.delivered == 6010 and summary.failed == 0
    rules.write_text("rules: [{id: broken, type: teleport}]\n")  # refused by the worker: FraudReloadRefused fires

    scraped = wait_for(prometheus_url, 'fraud_events_total{outcome="dead_letter"} >= 10', 60)
    assert scraped["data"]["result"], "Prometheus scraped the worker's counters"
    firing = wait_for(prometheus_url, 'ALERTS{alertname="FraudReloadRefused", alertstate="firing"}', 60)
    assert firing["data"]["result"], "a refused reload fires FraudReloadRefused on the real Prometheus"
    wait_for(prometheus_url, "instance:fraud_model_flag_share:rate15m", 30)

    failures, checked = [], 0
    for panel in panel_queries():
        promql = panel.rendered()
        answer = query(prometheus_url, promql, range_s=None if panel.instant else 120)
        checked += 1
        if answer.get("status") != "success":
            failures.append(f"{panel.panel} [{panel.ref_id}] invalid: {answer.get('error')}: {promql}")
        elif not answer["data"]["result"] and not any(name in promql for name in NEEDS_OLD_HISTORY):
            failures.append(f"{panel.panel} [{panel.ref_id}] returned no data: {promql}")
    assert checked >= 20
    assert not failures, "\n".join(failures)
