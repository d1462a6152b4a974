"""The model lifecycle on a real worker (Kafka, Redis): a shadow model scored next to the served one, analysts'
verdicts counted against decisions, and feature drift against the card's training deciles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaProducer

from fraudmon.core.events import event_to_dict
from stream_app.features import vectorize
from tests.conftest import PROJECT_ROOT
from tests.test_worker import collect, metric_value, produce
from training.export import feature_deciles
from training.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.integration


@pytest.fixture
def shadow_model(tmp_path):
    """The default model under another version with two thirds of its threshold (it flags more, some 9% of the
    test traffic: a tenth flags 93%, which the worker refuses as a shadow that does not fit), and a served copy
    whose card carries training deciles that the test traffic's amounts do not match (drift)."""
    paths = {}
    for role in ("served", "shadow"):
        for suffix in (".onnx", ".json"):
            shutil.copy(PROJECT_ROOT / "models" / f"default{suffix}", tmp_path / f"{role}{suffix}")
        paths[role] = tmp_path / f"{role}.onnx"
    shadow_card = json.loads((tmp_path / "shadow.json").read_text())
    shadow_card.update(version="shadow-1", threshold={**shadow_card["threshold"],
                                                       "value": shadow_card["threshold"]["value"] / 1.5})
    (tmp_path / "shadow.json").write_text(json.dumps(shadow_card))
    served_card = json.loads((tmp_path / "served.json").read_text())
    events, _ = simulate(SimulationConfig(n_events=2000, n_accounts=200, seed=3))
    quantiles = feature_deciles(vectorize(events, served_card["feature_names"]), served_card["feature_names"])
    quantiles["amount_log"]["deciles"] = [100.0 + i for i in range(9)]  # training saw amounts nobody spends
    quantiles["amount_log"]["shares"] = [0.0] * 9 + [1.0]
    served_card["feature_quantiles"] = quantiles
    (tmp_path / "served.json").write_text(json.dumps(served_card))
    return paths


def recent_daytime_ms() -> int:
    """Now, or 4 hours before between 01:00 and 05:00 UTC: the shipped model's simulated training traffic has no
    such hours, so it flags much of what comes then, and the shadow (two thirds of its threshold) would flag more
    than the worker accepts of a shadow that fits its traffic."""
    now = datetime.now(UTC)
    return int(((now - timedelta(hours=4)) if 1 <= now.hour < 5 else now).timestamp() * 1000)


def test_shadow_scores_verdicts_count_and_drift_shows(kafka_bootstrap, worker_topics, start_worker, shadow_model,
                                                       settings, tmp_path):
    verdicts_topic = f"verdicts-{worker_topics['transactions']}"
    from fraudmon.tools.stack import create_topics

    create_topics(kafka_bootstrap, [verdicts_topic], 3)
    env = {"FRAUDMON_MODEL": str(shadow_model["served"]), "FRAUDMON_WORKER__SHADOW_MODEL_PATH":
           str(shadow_model["shadow"]), "FRAUDMON_TOPICS__VERDICTS": verdicts_topic,
           "FRAUDMON_WORKER__DRIFT_WINDOW": "200"}
    worker = start_worker(worker_topics, env=env)
    events, _ = simulate(SimulationConfig(n_events=400, n_accounts=100, seed=5))
    sent = [{**event_to_dict(e), "timestamp": recent_daytime_ms() - 60_000 + i} for i, e in enumerate(events)]
    produce(kafka_bootstrap, worker_topics["transactions"], sent)
    decisions = {d["transaction_id"]: d for d in collect(kafka_bootstrap, worker_topics["scores"], len(sent))}
    assert len(decisions) == len(sent)
    assert all(d["shadow"]["version"] == "shadow-1" for d in decisions.values()), "every decision carries shadow"
    assert all((d["shadow"]["score"] > d["shadow"]["threshold"]) == d["shadow"]["flag"] for d in decisions.values())
    shadow_only = sum(d["shadow"]["flag"] and "model" not in d["reasons"] for d in decisions.values())
    assert shadow_only > 0, "a shadow with a lower threshold flags more, and never changes a decision"
    flagged = next(tx for tx, d in decisions.items() if d["decision"] == "flag")
    passed = next(tx for tx, d in decisions.items() if d["decision"] == "pass")

    env_cli = {"FRAUDMON_KAFKA_BOOTSTRAP": kafka_bootstrap, "FRAUDMON_REDIS_URL": settings.redis.url,
               "FRAUDMON_TOPICS__VERDICTS": verdicts_topic}

    def label(tx: str, verdict: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fraudmon.cli", "label", tx, verdict, "--reviewer", "ana"],
                              cwd=PROJECT_ROOT, env={**_environ(), **env_cli}, capture_output=True, text=True,
                              timeout=60)

    for tx, verdict in ((flagged, "--fraud"), (passed, "--fraud"), (passed, "--legit")):
        result = label(tx, verdict)
        assert result.returncode == 0, result.stderr
        assert f"the worker's decision: {decisions[tx]['decision']}" in result.stdout, result.stdout
    refused = label("never-decided", "--fraud")
    assert refused.returncode == 1 and "the worker has no decision on 'never-decided'" in refused.stderr, \
        "the worker's decision store is asked first: an unknown id is refused, not posted"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(verdicts_topic, key=b"x", value=b'{"transaction_id": "never-seen", "label": "fraud"}')
    producer.send(verdicts_topic, key=b"y", value=b'{"transaction_id": "t", "label": "maybe"}')
    producer.flush()
    letters = collect(kafka_bootstrap, worker_topics["dead_letter"], 2, timeout_s=60)
    assert sorted(letter["error"].split(":")[0] for letter in letters) == ["label", "transaction_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = worker.metrics_text()
        counts = {(d, v): metric_value(text, "fraud_verdicts_total", f'decision="{d}",verdict="{v}"')
                  for d in ("flag", "pass") for v in ("fraud", "legit")}
        if sum(counts.values()) >= 3:
            break
        time.sleep(0.5)
    assert counts == {("flag", "fraud"): 1, ("flag", "legit"): 0, ("pass", "fraud"): 1, ("pass", "legit"): 1}
    assert metric_value(text, "fraud_shadow_disagreements_total", 'kind="shadow_only"') == shadow_only
    assert metric_value(text, "fraud_feature_psi", 'feature="amount_log"') > 1.0, "amounts far from training"
    assert metric_value(text, "fraud_feature_psi", 'feature="has_ip"') < 0.1, "the same traffic as in training"


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_a_promotion_during_a_live_stream_loses_nothing_and_switches_within_a_reload(
        kafka_bootstrap, worker_topics, start_worker, settings, tmp_path):
    import threading
    from datetime import datetime

    from fraudmon.core.eventfiles import write_events, write_ground_truth
    from fraudmon.tools.models import promote
    from fraudmon.tools.produce import produce_events
    from stream_app.replay import raw_messages
    from tests.test_promote import copy_model

    served = copy_model(tmp_path / "models" / "default.onnx", "served-1")
    twin = copy_model(tmp_path / "models" / "candidates" / "twin-2" / "twin.onnx", "twin-2")
    backtest, truth = simulate(SimulationConfig(n_events=1500, n_accounts=200, seed=21))
    write_events(tmp_path / "recent.jsonl", backtest)
    write_ground_truth(tmp_path / "truth.csv", truth)
    worker_settings = settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"model_path": str(served)})})
    start_worker(worker_topics, env={"FRAUDMON_MODEL": str(served)})

    stream, _ = simulate(SimulationConfig(n_events=1600, n_accounts=300, seed=22))
    sender = threading.Thread(target=produce_events, args=(settings, stream), kwargs={
        "topic": worker_topics["transactions"], "rate": 200, "live_time": True})
    sender.start()
    time.sleep(3.0)
    labels = {t.transaction_id: t.label for t in truth}
    _, _, problems = promote(worker_settings, twin, list(raw_messages(tmp_path / "recent.jsonl")), labels,
                             max_recall_drop=0.0, max_alert_rate_rise=0.25, force=False)
    promoted_at = time.time()
    sender.join()
    assert not problems
    decisions = collect(kafka_bootstrap, worker_topics["scores"], len(stream))
    assert sorted(d["transaction_id"] for d in decisions) == sorted(e.transaction_id for e in stream), \
        "every event decided exactly once across the switch"
    versions = [(datetime.fromisoformat(d["decided_at"]).timestamp(), d["model"]["version"]) for d in decisions]
    assert {v for _, v in versions} == {"served-1", "twin-2"}
    reload_interval_s, batch_slack_s = 0.5, 1.0  # tests run workers with worker.reload_interval_s 0.5
    late = [v for t, v in versions if t > promoted_at + reload_interval_s + batch_slack_s]
    assert late and set(late) == {"twin-2"}
