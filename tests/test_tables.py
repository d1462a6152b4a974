"""Any numeric feature table (`--format table --label-column COL`): reading and its clear errors, training on a
table unlike transactions (140 columns of periodic signals, 1 = normal), evaluate and replay on it, and a real
worker serving the table model from events whose `features` carry the columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.core.errors import InputDataError
from fraudmon.core.eventfiles import TableSpec, read_events_file, read_table
from training.data import load_dataset, split_dataset

COLUMNS = [f"c{j}" for j in range(140)]
TABLE_OPTIONS = ["--format", "table", "--label-column", "label", "--fraud-value", "0"]


def signals_csv(path: Path, n: int = 2400, seed: int = 4) -> Path:
    """`n` rows of a 140-point sine (random phase and amplitude) plus noise; about 5% are anomalies with three
    times the amplitude, labelled 0 (1 = normal); an `id` text column too."""
    rng = np.random.default_rng(seed)
    t = np.arange(len(COLUMNS)) / len(COLUMNS)
    anomaly = rng.random(n) < 0.05
    amplitude = rng.uniform(0.8, 1.2, n) * np.where(anomaly, 3.0, 1.0)
    values = amplitude[:, None] * np.sin(2 * np.pi * (3 * t[None, :] + rng.random(n)[:, None]))
    values += rng.normal(0, 0.1, values.shape)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", *COLUMNS, "label"])
        for i in range(n):
            writer.writerow([f"s-{i}", *(f"{v:.5f}" for v in values[i]), 0 if anomaly[i] else 1])
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return signals_csv(tmp_path_factory.mktemp("table") / "signals.csv")


@pytest.fixture(scope="module")
def table_model(table: Path) -> tuple[Path, str]:
    """`fraudmon train` on the signals table: (model path, its output)."""
    out = table.parent / "models"
    result = CliRunner().invoke(app, ["train", "--data", str(table), *TABLE_OPTIONS, "--name", "signals",
                                      "--out-dir", str(out), "--epochs", "5", "--hidden", "32,16", "--quiet"])
    assert result.exit_code == 0, result.output
    return out / "signals.onnx", result.output


def test_reading_a_table_names_text_columns_and_counts_nan_cells(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,a,b,note,y\nr1,1,2,x,1\nr2,,3,y,0\nr3,4,nan,z,1\nr4,5,6,,0\nr5,7,8,w,0\n")
    data = read_table(path, TableSpec("y"), on_nonfinite="drop")
    assert data.features == ("a", "b") and set(data.skipped) == {"id", "note"}
    assert data.skipped["id"] == "'r1' in data row 1"
    assert data.table.tally.dropped == {"a": 1, "b": 1} and data.labels.tolist() == [1, 0, 0]
    assert [e.transaction_id for e in data.events()] == ["row-1", "row-4", "row-5"]
    assert [t.scenario for t in data.ground_truth()] == ["y=1", "normal", "normal"]
    with pytest.raises(InputDataError, match=r"2 rows hold NaN or infinite values \(a: 1, b: 1\)"):
        read_table(path, TableSpec("y"))
    with pytest.raises(InputDataError, match=r"no column 'label' in the header; its columns are id, a, b, note, y"):
        read_table(path, TableSpec("label"))
    with pytest.raises(InputDataError, match=r"y = 7 in no row of the 3 rows, so there is a single class \(values "
                                             r"seen: '0' \(2\), '1' \(1\)\); pass --fraud-value"):
        read_table(path, TableSpec("y", "7"), on_nonfinite="drop")
    path.write_text("a,amount_log,y\n1,2,1\n")
    with pytest.raises(InputDataError, match="y = 1 in every row"):
        read_table(path, TableSpec("y"))


def test_table_split_is_random_without_a_time_column_and_by_time_with_one(table, tmp_path):
    dataset = load_dataset(table, table=TableSpec("label", "0"))
    assert dataset.split_mode == "random" and dataset.source["skipped"] == {"id": "'s-0' in data row 1"}
    assert dataset.source["features"] == COLUMNS and dataset.labels.mean() == pytest.approx(0.05, abs=0.02)
    first, again = split_dataset(dataset, seed=1), split_dataset(dataset, seed=1)
    assert np.array_equal(first.test, again.test) and not np.array_equal(first.test, split_dataset(dataset).test)
    assert np.diff(np.sort(first.test)).max() < 50, "a random split draws held-out rows from the whole file"
    timed = tmp_path / "timed.csv"
    timed.write_text("t,a,y\n" + "".join(f"{2000 - i},{i % 7},{int(i % 9 == 0)}\n" for i in range(2000)))
    by_time = load_dataset(timed, table=TableSpec("y", time_column="t"))
    assert by_time.split_mode == "time" and by_time.source["features"] == ["a"]
    split = split_dataset(by_time)
    assert by_time.timestamps[split.test].min() > by_time.timestamps[split.val].max()
    clash = tmp_path / "clash.csv"
    clash.write_text("amount_log,y\n" + "".join(f"{i},{int(i % 9 == 0)}\n" for i in range(50)))
    result = CliRunner().invoke(app, ["train", "--data", str(clash), "--format", "table", "--label-column", "y",
                                      "--out-dir", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 2 and "amount_log have the names of built-in features" in result.output
    result = CliRunner().invoke(app, ["train", "--data", str(clash), "--format", "table", "--quiet"])
    assert result.exit_code == 2 and "--format table needs --label-column COL" in result.output


def test_training_on_periodic_signals_reports_and_evaluates(table, table_model, tmp_path):
    onnx_path, output = table_model
    assert "split at random (no time column; seed 42)" in output
    assert "1 columns hold text and are skipped (not features): id ('s-0' in data row 1)" in output
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert card["feature_names"] == COLUMNS and card["training"]["preset"] == "table"
    assert card["training"]["split"]["mode"] == "random" and card["training"]["data"]["label_column"] == "label"
    assert card["explanation"]["fields"]["c0"]["normal"][0] < 0 < card["explanation"]["fields"]["c0"]["normal"][1]
    report = (onnx_path.parent / "signals-report" / "report.md").read_text()
    assert "drawn at random with seed 42: the table has no time column" in report and "| label=0 |" in report
    assert card["metrics"]["model"]["roc_auc"] > 0.95
    result = CliRunner().invoke(app, ["evaluate", "--model", str(onnx_path), "--data", str(table), *TABLE_OPTIONS,
                                      "--report-dir", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert document["about"]["evaluated part"] == "holdout"
    assert document["metrics"]["model"]["roc_auc"] == pytest.approx(card["metrics"]["model"]["roc_auc"], abs=1e-6)


def test_replay_decides_each_table_row_with_ground_truth(table, table_model, tmp_path):
    onnx_path, _ = table_model
    out = tmp_path / "decisions.jsonl"
    result = CliRunner().invoke(app, ["replay", str(table), *TABLE_OPTIONS, "--out", str(out)],
                                env={"FRAUDMON_MODEL": str(onnx_path)})
    assert result.exit_code == 0, result.output
    assert "decisions 2400" in result.output and "recall label=0" in result.output
    decisions = [json.loads(line) for line in out.read_text().splitlines()]
    assert decisions[0]["transaction_id"] == "row-1"
    assert all(item["field"] in COLUMNS for d in decisions for item in d["model"]["top_features"])


@pytest.mark.integration
def test_a_worker_serves_a_table_model(table, table_model, kafka_bootstrap, worker_topics, start_worker, tmp_path):
    """`fraudmon produce --format table` sends rows as events carrying the columns in `features`; a real worker
    serving the table model decides each of them with the columns as its explanation."""
    from tests.test_worker import collect

    onnx_path, _ = table_model
    start_worker(worker_topics, env={"FRAUDMON_MODEL": str(onnx_path)})
    truth = tmp_path / "truth.csv"
    result = CliRunner().invoke(app, ["produce", "--file", str(table), *TABLE_OPTIONS, "--count", "60",
                                      "--rate", "0", "--topic", worker_topics["transactions"], "--bootstrap",
                                      kafka_bootstrap, "--truth", str(truth), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2400 events (table), validated" in result.output and "not sent as features: id" in result.output
    decisions = collect(kafka_bootstrap, worker_topics["scores"], 60)
    assert len(decisions) == 60 and all(d["model"] is not None and not d["degraded"] for d in decisions)
    events = {e.transaction_id: e for e in read_events_file(table, table=TableSpec("label", "0"))[0]}
    items = [(decision, item) for decision in decisions for item in decision["model"]["top_features"]]
    assert items, "some column lies outside its normal range"
    for decision, item in items:
        assert item["value"] == pytest.approx(events[decision["transaction_id"]].features[item["field"]], abs=1e-4)
    assert len(truth.read_text().splitlines()) == 61


def test_a_time_split_without_frauds_in_a_part_falls_back_to_a_seeded_random_split(tmp_path):
    """All frauds early in time: a time split would leave validation and held-out rows without one."""
    from training.data import load_dataset, split_dataset

    rng = np.random.default_rng(0)
    rows = ["t,a,b,label"] + [f"{i},{rng.normal():.4f},{rng.normal():.4f},{int(i < 3000 and i % 40 == 0)}"
                              for i in range(6000)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    dataset = load_dataset(tmp_path / "t.csv", table=TableSpec("label", time_column="t"))
    split = split_dataset(dataset, seed=7)
    assert split.mode == "random" and "validation and held-out part without frauds" in split.fallback
    assert dataset.labels[split.val].any() and dataset.labels[split.test].any()
    assert split.summary(dataset)["fallback"] == split.fallback
    again = split_dataset(dataset, seed=7)
    np.testing.assert_array_equal(again.test, split.test)
    frauds_late = load_dataset(tmp_path / "t.csv", table=TableSpec("label"))
    assert split_dataset(frauds_late).fallback is None, "a table without a time column is split at random anyway"
