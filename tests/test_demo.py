"""README's first command, shortened: `fraudmon demo` on the test stack prints its summary and exits 0."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration


def test_demo_prints_its_summary_and_exits_zero(local_stack, settings, tmp_path):
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump()))
    out_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "fraudmon.cli", "demo", "--config", str(config), "--duration", "6", "--rate", "300",
         "--malformed", "5", "--seed", "3", "--out-dir", str(out_dir)],
        cwd=PROJECT_ROOT, env={**os.environ, "FRAUDMON_WORKER__WEB_PORT": "0"}, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "fraud-monitor demo summary" in result.stdout
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["complete"] and summary["decisions"] == summary["produced_valid"] == 1800
    assert summary["duplicate_decisions"] == 0 and summary["dead_letters"] == 5
    assert summary["recall_by_scenario"] and summary["recall"] > 0.5
    assert summary["flags"] == summary["flagged_topic_messages"]
    # broker append time to broker append time, on the run's own topics, deleted afterwards
    e2e = summary["end_to_end_ms"]  # JSON keys
    assert 0 < e2e["50"] <= e2e["99"] <= summary["end_to_end_max_ms"]
    assert not [topic for topic in _topics(settings) if topic.startswith("demo-")]
    worker_log = (out_dir / "worker.log").read_text(errors="replace")
    assert "[ERROR]" not in worker_log and " ERROR " not in worker_log, worker_log[-3000:]
    assert all(s.running for s in local_stack.status()), "the demo leaves a stack it did not start running"
    urls = re.findall(r"https?://[^\s);,]+", result.stdout)
    assert any(f":{settings.stack.prometheus_port}/" in url for url in urls), "links use the configured port"
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200, url


def _topics(settings) -> list[str]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        return admin.list_topics()
    finally:
        admin.close()
