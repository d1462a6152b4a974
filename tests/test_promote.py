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


def served_files(home: dict[str, Path]) -> tuple[bytes, bytes]:
    return home["served"].read_bytes(), home["served"].with_suffix(".json").read_bytes()


def listing(home: dict[str, Path]) -> dict[str, list[str]]:
    """`fraudmon models` as role -> the versions listed in that role."""
    result = run("models", "--config", str(home["config"]))
    assert result.exit_code == 0, result.output
    roles: dict[str, list[str]] = {}
    for line in result.output.splitlines():
        role, _, rest = line.partition(" ")
        roles.setdefault(role, []).append(rest.split()[1])
    return roles


def promote_twin(home: dict[str, Path]):
    return run("promote", "twin", "--data", str(home["data"]), "--truth", str(home["truth"]),
               "--config", str(home["config"]))


def test_an_equal_candidate_is_promoted_then_rolled_back_to_the_same_files(home):
    before = served_files(home)
    result = promote_twin(home)
    assert result.exit_code == 0, result.output
    card = json.loads(home["served"].with_suffix(".json").read_text())
    assert card["version"] == "twin-2" and card["promotion"]["replaced"] == "served-1"
    assert not card["promotion"]["forced"]
    assert not list(home["served"].parent.glob("*.partial")), "no partial files left behind"
    assert listing(home) == {"served": ["twin-2"], "previous": ["served-1"], "candidate": ["blind-1"]}, \
        "the served model is not also listed as a candidate"
    back = run("promote", "--rollback", "--config", str(home["config"]))
    assert back.exit_code == 0, back.output
    assert "served-1 is served again; twin-2 is not" in back.output
    assert served_files(home) == before, "the model rolled back to is restored byte for byte (a tracked default " \
                                         "stays as checked in)"
    assert listing(home) == {"served": ["served-1"], "candidate": ["twin-2", "blind-1"]}
    history = [json.loads(line) for line in (home["served"].parent / "history.jsonl").read_text().splitlines()]
    assert [(e["action"], e["served"]) for e in history] == [("promote", "twin-2"), ("rollback", "served-1")]


def test_a_second_rollback_is_refused_and_says_how_to_serve_the_candidate_again(home):
    assert promote_twin(home).exit_code == 0
    assert run("promote", "--rollback", "--config", str(home["config"])).exit_code == 0
    again = run("promote", "--rollback", "--config", str(home["config"]))
    assert again.exit_code == 2 and again.output.count("\n") == 1, again.output
    assert again.output.startswith("error: nothing to roll back to: served-1 is served again since ")
    assert "when twin-2 was rolled back; to serve twin-2 again, promote it through the gate: `fraudmon promote " \
           "twin-2 --data <labelled recent events>`" in again.output
    assert served_version(home) == "served-1"


def test_a_broken_served_model_is_rolled_back(home):
    before = served_files(home)
    assert promote_twin(home).exit_code == 0
    home["served"].write_bytes(b"not a graph")
    back = run("promote", "--rollback", "--config", str(home["config"]))
    assert back.exit_code == 0 and "served-1 is served again; twin-2 is not" in back.output, back.output
    assert served_files(home) == before


def test_a_rollback_with_nothing_promoted_is_refused(home):
    result = run("promote", "--rollback", "--config", str(home["config"]))
    assert result.exit_code == 2
    assert result.output.startswith("error: nothing to roll back to: served-1 is served and no promotion replaced")


def test_promoting_the_served_model_again_is_refused_and_keeps_the_previous(home):
    assert promote_twin(home).exit_code == 0
    again = promote_twin(home)
    assert again.exit_code == 2 and "twin-2 is already the served model" in again.output
    assert listing(home)["previous"] == ["served-1"], "the model to roll back to is kept"


def test_force_promotes_a_refused_candidate_and_the_card_says_so(home):
    result = run("promote", "blind", "--data", str(home["data"]), "--truth", str(home["truth"]), "--force",
                 "--config", str(home["config"]))
    assert result.exit_code == 0, result.output
    card = json.loads(home["served"].with_suffix(".json").read_text())
    assert card["version"] == "blind-1" and card["promotion"]["forced"] and card["promotion"]["gate"]


def test_a_candidate_for_other_data_is_refused(home, tmp_path):
    """A card-holder style model (it reads features.V1..V4) on simulated traffic: it cannot score it."""
    from tests.test_export import tiny_model

    _, _, onnx_path, _ = tiny_model(tmp_path / "v-model")
    result = run("promote", str(onnx_path), "--data", str(home["data"]), "--truth", str(home["truth"]),
                 "--config", str(home["config"]))
    assert result.exit_code == 1, result.output
    assert "promotion refused: the candidate does not fit the backtest data" in result.output
    assert "needs 4 precomputed features" in result.output and "no baseline" not in result.output
    assert served_version(home) == "served-1"


def test_a_served_model_for_other_data_is_no_baseline_and_says_so(home, tmp_path):
    """The issue's promote, the other way round: the served model does not fit the backtest data (here it cannot
    score it), so its recall is no baseline; the candidate that fits is judged on its own and promoted."""
    from tests.test_export import tiny_model

    _, _, onnx_path, _ = tiny_model(tmp_path / "v-model")
    shutil.copy(onnx_path, home["served"])
    shutil.copy(onnx_path.with_suffix(".json"), home["served"].with_suffix(".json"))
    result = promote_twin(home)
    assert result.exit_code == 0, result.output
    assert "warning: the served model is no baseline for this data" in result.output
    assert "needs 4 precomputed features" in result.output and "promoted twin-2" in result.output
    assert served_version(home) == "twin-2"
    card = json.loads(home["served"].with_suffix(".json").read_text())
    assert "needs 4 precomputed features" in card["promotion"]["backtest"]["served"]["misfit"]
    assert card["promotion"]["backtest"]["candidate"]["misfit"] is None


def test_on_card_holder_data_the_simulator_models_are_named_unfit(home, tmp_path):
    """The issue's case: served and candidate trained on simulated events, backtested on card-holder rows, flag
    every row; the served one is said to be no baseline and the candidate is refused for not fitting."""
    from fraudmon.core.eventfiles import read_events_file
    from tests.conftest import CREDITCARD

    events, truth = read_events_file(CREDITCARD)
    write_events(tmp_path / "cc.jsonl", events[:600])
    write_ground_truth(tmp_path / "cc-truth.csv", truth[:600])
    result = run("promote", "twin", "--data", str(tmp_path / "cc.jsonl"), "--truth", str(tmp_path / "cc-truth.csv"),
                 "--config", str(home["config"]))
    assert result.exit_code == 1, result.output
    assert "warning: the served model is no baseline" in result.output
    assert "the candidate does not fit the backtest data: model default (twin-2) does not fit" in result.output
    assert "channel in 500 of 500" in result.output and "flags 600 of 600 events" in result.output
    assert "fits the data" in result.output and served_version(home) == "served-1"
