"""Promotion behind a backtest gate (offline, through the worker's decision code), atomic switch and rollback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.core.eventfiles import write_events, write_ground_truth
from tests.conftest import PROJECT_ROOT
from training.simulate import SimulationConfig, simulate


def copy_model(target: Path, version: str, threshold_factor: float = 1.0) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "models" / "default.onnx", target)
    card = json.loads((PROJECT_ROOT / "models" / "default.json").read_text())
    threshold = {**card["threshold"], "value": card["threshold"]["value"] * threshold_factor}
    card.update(version=version, threshold=threshold)
    target.with_suffix(".json").write_text(json.dumps(card))
    return target


@pytest.fixture
def home(tmp_path) -> dict[str, Path]:
    models = tmp_path / "models"
    copy_model(models / "default.onnx", "served-1")
    copy_model(models / "candidates" / "blind-1" / "blind.onnx", "blind-1", threshold_factor=1e6)
    copy_model(models / "candidates" / "twin-2" / "twin.onnx", "twin-2")
    events, truth = simulate(SimulationConfig(n_events=3000, n_accounts=300, seed=9))
    write_events(tmp_path / "recent.jsonl", events)
    write_ground_truth(tmp_path / "truth.csv", truth)
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"worker": {"model_path": str(models / "default.onnx"),
                                                 "rules_path": str(PROJECT_ROOT / "config" / "rules.yaml")}}))
    return {"config": config, "served": models / "default.onnx", "data": tmp_path / "recent.jsonl",
            "truth": tmp_path / "truth.csv"}


def served_version(home: dict[str, Path]) -> str:
    return json.loads(home["served"].with_suffix(".json").read_text())["version"]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_worse_candidate_is_refused_with_the_table(home):
    result = run("promote", "blind", "--data", str(home["data"]), "--truth", str(home["truth"]),
                 "--config", str(home["config"]))
    assert result.exit_code == 1, result.output
    assert "recall drops from" in result.output and "served" in result.output and "candidate" in result.output
    assert served_version(home) == "served-1"


def test_an_equal_candidate_is_promoted_then_rolled_back(home):
    result = run("promote", "twin", "--data", str(home["data"]), "--truth", str(home["truth"]),
                 "--config", str(home["config"]))
    assert result.exit_code == 0, result.output
    card = json.loads(home["served"].with_suffix(".json").read_text())
    assert card["version"] == "twin-2" and card["promotion"]["replaced"] == "served-1"
    assert not card["promotion"]["forced"]
    assert not list(home["served"].parent.glob("*.partial")), "no partial files left behind"
    listing = run("models", "--config", str(home["config"])).output
    assert "served" in listing and "twin-2" in listing and "previous" in listing and "blind-1" in listing
    back = run("promote", "--rollback", "--config", str(home["config"]))
    assert back.exit_code == 0 and "served-1 is served again" in back.output
    assert served_version(home) == "served-1"


def test_force_promotes_a_refused_candidate_and_the_card_says_so(home):
    result = run("promote", "blind", "--data", str(home["data"]), "--truth", str(home["truth"]), "--force",
                 "--config", str(home["config"]))
    assert result.exit_code == 0, result.output
    card = json.loads(home["served"].with_suffix(".json").read_text())
    assert card["version"] == "blind-1" and card["promotion"]["forced"] and card["promotion"]["gate"]
