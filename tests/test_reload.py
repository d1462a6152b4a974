"""Hot reload: a changed rules file or model is validated and swapped in; a broken one is refused and the old
one keeps serving. Unit tests on the reloader, then one on a running worker (real Kafka and Redis)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from fraudmon.core.config import load_settings
from stream_app.engine import RawMessage
from stream_app.runtime import HotReloader, build_engine
from stream_app.state import InMemoryStateStore
from tests.conftest import PROJECT_ROOT

from .test_worker import collect, metric_value, produce

RULES = "rules:\n  - {id: big, when: event.amount > 1000, action: review}\n"
STRICTER = RULES + "  - {id: any, when: event.amount > 1, action: review}\n"


def touch_later(path) -> None:
    """Make sure the mtime moves even on coarse-grained file systems."""
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 2))


@pytest.fixture
def artifacts(tmp_path):
    shutil.copy(PROJECT_ROOT / "models" / "default.onnx", tmp_path / "model.onnx")
    shutil.copy(PROJECT_ROOT / "models" / "default.json", tmp_path / "model.json")
    (tmp_path / "rules.yaml").write_text(RULES)
    return tmp_path


@pytest.fixture
def reloader(artifacts):
    settings = load_settings(environ={"FRAUDMON_MODEL": str(artifacts / "model.onnx"),
                                      "FRAUDMON_RULES": str(artifacts / "rules.yaml")})
    engine = build_engine(settings, store=InMemoryStateStore())
    return HotReloader(engine, artifacts / "model.onnx", artifacts / "rules.yaml")


def decide(engine, amount: float) -> dict:
    event = {"transaction_id": f"t-{time.monotonic_ns()}", "account_id": "a", "amount": amount,
             "timestamp": int(time.time() * 1000)}
    return engine.process([RawMessage(json.dumps(event).encode(), None, "t", 0, 0)]).decisions[0]


def test_nothing_changed_nothing_reloaded(reloader):
    assert reloader.check() == []


def test_valid_rules_are_swapped_in(reloader, artifacts):
    assert [h["id"] for h in decide(reloader.engine, 50)["rules"]] == []
    (artifacts / "rules.yaml").write_text(STRICTER)
    touch_later(artifacts / "rules.yaml")
    assert reloader.check() == ["rules: ok"]
    assert [h["id"] for h in decide(reloader.engine, 50)["rules"]] == ["any"]
    assert reloader.engine.metrics.reloads.labels("rules", "ok")._value.get() == 1


def test_invalid_rules_are_refused_and_the_old_ones_keep_serving(reloader, artifacts):
    (artifacts / "rules.yaml").write_text("rules:\n  - {id: x, when: event.amount > 'a lot', action: review}\n")
    touch_later(artifacts / "rules.yaml")
    [outcome] = reloader.check()
    assert outcome.startswith("rules: refused") and "line 2: rule x: when:" in outcome
    assert [h["id"] for h in decide(reloader.engine, 5000)["rules"]] == ["big"]
    assert reloader.engine.metrics.reloads.labels("rules", "refused")._value.get() == 1


def test_new_model_is_swapped_in(reloader, artifacts):
    card = json.loads((artifacts / "model.json").read_text())
    card.update(version="reloaded-1", threshold={**card["threshold"], "value": 1e9})
    (artifacts / "model.json").write_text(json.dumps(card))
    touch_later(artifacts / "model.json")
    assert reloader.check() == ["model: ok"]
    decision = decide(reloader.engine, 50)
    assert decision["model"]["version"] == "reloaded-1" and decision["model"]["threshold"] == 1e9


@pytest.mark.parametrize("breakage", ["corrupt graph", "card for another graph", "card with a wrong width"])
def test_broken_model_is_refused_and_the_old_one_keeps_serving(reloader, artifacts, breakage):
    before = reloader.engine.model.version
    if breakage == "corrupt graph":
        (artifacts / "model.onnx").write_bytes(b"\x08\x01garbage")
    else:
        card = json.loads((artifacts / "model.json").read_text())
        if breakage == "card for another graph":
            card["onnx_sha256"] = "0" * 64
        else:
            card["feature_names"] = card["feature_names"][:-1]
            card["n_features"] -= 1
        (artifacts / "model.json").write_text(json.dumps(card))
    touch_later(artifacts / "model.json")
    [outcome] = reloader.check()
    assert outcome.startswith("model: refused")
    assert reloader.engine.model.version == before
    decision = decide(reloader.engine, 50)
    assert decision["model"]["version"] == before and not decision["degraded"]
    assert reloader.engine.metrics.reloads.labels("model", "refused")._value.get() == 1


@pytest.mark.integration
def test_running_worker_reloads_rules_and_refuses_a_broken_model(
    kafka_bootstrap, worker_topics, start_worker, artifacts
):
    worker = start_worker(worker_topics, env={"FRAUDMON_RULES": str(artifacts / "rules.yaml"),
                                              "FRAUDMON_MODEL": str(artifacts / "model.onnx")})
    now_ms = int(time.time() * 1000)

    def send(tag: str) -> dict:
        event = {"transaction_id": f"reload-{tag}", "account_id": f"acc-{tag}", "amount": 50.0, "timestamp": now_ms}
        produce(kafka_bootstrap, worker_topics["transactions"], [event])
        return event

    send("before")
    (artifacts / "rules.yaml").write_text(STRICTER)
    (artifacts / "model.onnx").write_bytes(b"not a model any more")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = worker.metrics_text()
        rules_ok = metric_value(text, "fraud_reloads_total", 'artifact="rules",result="ok"')
        model_refused = metric_value(text, "fraud_reloads_total", 'artifact="model",result="refused"')
        if rules_ok and model_refused:
            break
        time.sleep(0.5)
    assert (rules_ok, model_refused) == (1, 1)
    send("after")
    decisions = {d["transaction_id"]: d for d in collect(kafka_bootstrap, worker_topics["scores"], 2)}
    assert [h["id"] for h in decisions["reload-before"]["rules"]] == []
    assert [h["id"] for h in decisions["reload-after"]["rules"]] == ["any"], "new rules without a restart"
    assert not decisions["reload-after"]["degraded"], "the old model keeps serving"
    assert worker.process.poll() is None


def test_a_model_that_does_not_fit_the_recent_events_is_refused(reloader, artifacts, tmp_path):
    from tests.test_export import tiny_model

    for amount in (10, 20, 30):
        decide(reloader.engine, amount)  # events without precomputed features, as the simulator sends
    _, _, onnx_path, _ = tiny_model(tmp_path / "v-model")  # needs features.V1..V4
    shutil.copy(onnx_path, artifacts / "model.onnx")
    shutil.copy(onnx_path.with_suffix(".json"), artifacts / "model.json")
    touch_later(artifacts / "model.json")
    [outcome] = reloader.check()
    assert outcome.startswith("model: refused") and "needs 4 precomputed features (V1, V2, V3, V4)" in outcome
    assert "3 of the last 3 events lack some" in outcome
    assert not decide(reloader.engine, 40)["degraded"], "the old model keeps serving"


def test_replay_with_a_model_for_other_data_stops_at_the_first_batch(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from fraudmon.cli import app
    from fraudmon.core.eventfiles import write_events
    from tests.test_export import tiny_model
    from training.simulate import SimulationConfig, simulate

    _, _, onnx_path, _ = tiny_model(tmp_path / "v-model")  # needs features.V1..V4: not in simulated events
    events, _ = simulate(SimulationConfig(n_events=2000, n_accounts=200, seed=4))
    write_events(tmp_path / "events.jsonl", events)
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"worker": {"model_path": str(onnx_path),
                                                 "rules_path": str(PROJECT_ROOT / "config" / "rules.yaml")}}))
    result = CliRunner().invoke(app, ["replay", str(tmp_path / "events.jsonl"), "--config", str(config)])
    assert result.exit_code == 2
    assert "needs 4 precomputed features" in result.output and "Traceback" not in result.output
    assert result.output.count("error:") == 1
