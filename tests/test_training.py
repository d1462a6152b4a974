"""Data loading, the time split, normal-only training, and the whole `train` → report → `evaluate` run."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fraudmon.core.errors import InputDataError
from fraudmon.core.events import FILE_LIMITS, event_from_dict
from training.data import Dataset, load_dataset, split_dataset

HEADER = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class"]


def card_csv(path: Path, n: int = 20, fraud_every: int = 0, seed: int = 0, edit=None) -> Path:
    """A card-holder CSV with `n` rows; `edit(rows)` may alter the string cells."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        fraud = bool(fraud_every) and i % fraud_every == fraud_every - 1
        v = rng.normal(0, 1, 28) + (6 if fraud else 0)
        rows.append([str(i), *(f"{x:.6f}" for x in v), f"{rng.gamma(2, 20):.2f}", "1" if fraud else "0"])
    if edit:
        edit(rows)
    path.write_text("\n".join(",".join(r) for r in [HEADER, *rows]) + "\n")
    return path


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "cc.csv"
    path.write_text("Time,V1,V2,Amount,Class\n0,1,2,3,0\n")
    with pytest.raises(InputDataError, match=r"lacks the card-holder columns V3, V4, .*V28"):
        load_dataset(path, fmt="creditcard")
    events = tmp_path / "events.csv"
    events.write_text("transaction_id,amount\ntx-1,3\n")
    with pytest.raises(InputDataError, match="lacks the event columns account_id, timestamp"):
        load_dataset(events)
    truth = tmp_path / "truth.csv"
    truth.write_text("transaction_id,scenario\ntx-1,normal\n")
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"transaction_id":"tx-1","account_id":"a","amount":1,"timestamp":0}\n')
    with pytest.raises(InputDataError, match="lacks the ground-truth columns label"):
        load_dataset(jsonl, truth)


def test_non_numeric_cell_names_row_and_column(tmp_path):
    def corrupt(rows):
        rows[4][7] = "abc"  # data row 5 = file line 6, column V7

    with pytest.raises(InputDataError, match=r"data row 5 \(file line 6\), column V7: 'abc' is not a number"):
        load_dataset(card_csv(tmp_path / "cc.csv", edit=corrupt))
    events = tmp_path / "events.csv"
    events.write_text("transaction_id,account_id,amount,timestamp\ntx-1,a,1.5,0\ntx-2,a,lots,0\n")
    with pytest.raises(InputDataError, match=r"file line 3\), column amount: 'lots' is not a number"):
        load_dataset(events)


def test_nan_and_inf_are_counted_and_dropped_or_refused(tmp_path):
    def poison(rows):
        rows[1][3] = "nan"
        rows[2][3] = ""
        rows[3][29] = "inf"
        rows[4][29] = "-inf"

    path = card_csv(tmp_path / "cc.csv", n=30, edit=poison)
    dataset = load_dataset(path)
    assert len(dataset) == 26
    assert dataset.source["dropped_nonfinite"] == 4
    assert dataset.source["dropped_detail"] == {"V3": 2, "Amount": 2}
    assert all(np.isfinite(e.amount) and np.isfinite(list(e.features.values())).all() for e in dataset.events)
    with pytest.raises(InputDataError, match=r"4 rows hold NaN or infinite values \(V3: 2, Amount: 2\)"):
        load_dataset(path, on_nonfinite="raise")
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"transaction_id":"t1","account_id":"a","amount":NaN,"timestamp":0}\n'
                     '{"transaction_id":"t2","account_id":"a","amount":1,"timestamp":0,"features":{"V1":Infinity}}\n'
                     '{"transaction_id":"t3","account_id":"a","amount":1,"timestamp":0}\n')
    dataset = load_dataset(jsonl)
    assert [e.transaction_id for e in dataset.events] == ["t3"]
    assert dataset.source["dropped_detail"] == {"amount": 1, "features.V1": 1}


def test_invalid_events_and_labels_name_the_line(tmp_path):
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"transaction_id":"t1","account_id":"a","amount":1,"timestamp":0}\n{"amount":1}\n')
    with pytest.raises(InputDataError, match="line 2, field transaction_id: required"):
        load_dataset(jsonl)
    jsonl.write_text('{"transaction_id":"t1","account_id":"a","amount":1,"timestamp":0}\nnot json\n')
    with pytest.raises(InputDataError, match="line 2: not JSON"):
        load_dataset(jsonl)
    jsonl.write_text('{"transaction_id":"t1","account_id":"a","amount":1,"timestamp":0}\n'
                     '{"transaction_id":"t2","account_id":"a","amount":1,"timestamp":0}\n')
    truth = tmp_path / "truth.csv"
    truth.write_text("transaction_id,label,scenario\nt1,0,normal\n")
    with pytest.raises(InputDataError, match=r"1 events have no row in .*truth.csv \(e.g. t2\)"):
        load_dataset(jsonl, truth)
    truth.write_text("transaction_id,label,scenario\nt1,0,normal\nt2,yes,x\n")
    with pytest.raises(InputDataError, match="line 3, column label: 'yes' is not 0 or 1"):
        load_dataset(jsonl, truth)


def test_too_few_normal_training_rows_is_a_clear_error(tmp_path):
    dataset = load_dataset(card_csv(tmp_path / "cc.csv", n=600))
    with pytest.raises(InputDataError, match=r"only 336 normal training rows .*need at least 500"):
        split_dataset(dataset)


def test_time_split_trains_on_the_past_and_tests_on_the_future():
    rng = np.random.default_rng(1)
    times = rng.permutation(2000) * 1000  # file order is not time order
    events = [event_from_dict({"transaction_id": f"t{i}", "account_id": "a", "amount": 1.0, "timestamp": int(t)},
                              FILE_LIMITS) for i, t in enumerate(times)]
    labels = (rng.random(2000) < 0.05).astype(np.int8)
    dataset = Dataset(events, labels)
    split = split_dataset(dataset, test_fraction=0.3, val_fraction=0.2)
    ts = dataset.timestamps
    assert len(split.test) == 600 and len(split.val) == 280
    assert ts[split.train].max() < ts[split.val].min() <= ts[split.val].max() < ts[split.test].min()
    assert split.normal_only and labels[split.train].sum() == 0
    past_normals = ((ts < ts[split.val].min()) & (labels == 0)).sum()
    assert len(split.train) == past_normals  # every normal row of the training period, and only those
    assert labels[split.val].sum() > 0 and labels[split.test].sum() > 0  # evaluation keeps the frauds
    unlabelled = split_dataset(Dataset(events))
    assert not unlabelled.normal_only and len(unlabelled.train) == 1120
    assert len(split_dataset(dataset, normal_only=False).train) == 1120  # repeating an unlabelled run's split


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small but complete `train` run on simulated data (3 epochs)."""
    from fraudmon.core.eventfiles import write_events, write_ground_truth
    from training.simulate import SimulationConfig, simulate
    from training.train import TrainRequest, train

    root = tmp_path_factory.mktemp("train")
    events, truth = simulate(SimulationConfig(n_events=4000, n_accounts=200, fraud_rate=0.03, seed=3))
    write_events(root / "events.jsonl", events)
    write_ground_truth(root / "truth.csv", truth)
    result = train(TrainRequest(data=root / "events.jsonl", truth=root / "truth.csv", name="small",
                                out_dir=root / "models", overrides={"epochs": 3, "hidden": (16, 8)},
                                verbose=0, command="test"))
    return root, result


def test_normal_only_training_really_excludes_frauds(trained):
    """The autoencoder learns from normal rows only: the evaluated fit's scaling is the statistics of the normal
    training rows, the served graph's those of every normal row (frauds of every period left out)."""
    import onnx
    from onnx import numpy_helper

    from stream_app.features import vectorize

    root, result = trained
    dataset = load_dataset(root / "events.jsonl", root / "truth.csv")
    split = split_dataset(dataset)
    x = vectorize(dataset.events, result.card["feature_names"]).astype(np.float64)
    in_period = np.flatnonzero(dataset.timestamps < dataset.timestamps[split.val].min())
    assert dataset.labels[in_period].sum() > 0, "the test needs frauds inside the training period"
    assert set(split.train) == set(in_period[dataset.labels[in_period] == 0])
    np.testing.assert_allclose(result.evaluated.scaler_.mean, x[split.train].mean(axis=0), atol=1e-9)
    graph = onnx.load(result.onnx_path).graph
    constants = {t.name: t for t in graph.initializer}
    sub = next(n for n in graph.node if n.op_type == "Sub" and "features" in n.input)  # (features - mean) / std
    (mean,) = [numpy_helper.to_array(constants[name]).reshape(-1) for name in sub.input if name in constants]
    normal = dataset.labels == 0
    np.testing.assert_allclose(mean, x[normal].mean(axis=0), atol=1e-5,
                               err_msg="the served graph's scaling mean is not the mean of every normal row")
    assert not np.allclose(mean, x.mean(axis=0), atol=1e-5)
    assert result.card["training"]["normal_only"] is True
    assert result.card["training"]["split"]["train"]["frauds"] == 0


def test_card_says_what_the_served_model_learned_from(trained):
    """The served model is refitted on every row with the settings the split chose; the card says so, and that
    its figures come from the fit on the training part and validation slice."""
    root, result = trained
    dataset = load_dataset(root / "events.jsonl", root / "truth.csv")
    served, evaluated = result.served, result.evaluated
    assert served.fitted_on_ == {"rows": 4000, "frauds": int(dataset.labels.sum()),
                                 "autoencoder_rows": int((dataset.labels == 0).sum())}
    assert evaluated.fitted_on_["rows"] == 4000 - len(split_dataset(dataset).test)
    card = result.card["training"]["served"]
    assert card["learned_from"].startswith(f"every row of the data: 4,000 rows, {int(dataset.labels.sum())} frauds")
    assert card["settings_from_split"]["epochs"] == evaluated.autoencoder_.best_epoch == served.config.epochs
    assert card["settings_from_split"]["head_C"] == evaluated.head_.c_ == served.head_.c_
    assert card["settings_from_split"]["alpha"] == evaluated.combination_.alpha_ == served.combination_.alpha_
    assert card["figures"].startswith("metrics: the held-out part scored by the detector fitted on the training part")
    assert result.card["parts"]["head"]["fitted_on"]["rows"] == 4000
    assert result.card["expected_alert_rate"] == evaluated.expected_alert_rate_
    assert "served model: refitted on every row of the data" in result.report_path.read_text()


def test_report_files_exist_and_match_a_recomputation(trained):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from stream_app.features import vectorize

    root, result = trained
    report_dir = result.report_path.parent
    for name in ("report.md", "metrics.json", "loss.png", "scores.png", "roc.png", "pr.png"):
        assert (report_dir / name).stat().st_size > 0, name
    metrics = json.loads((report_dir / "metrics.json").read_text())["metrics"]
    assert metrics == result.card["metrics"]

    dataset = load_dataset(root / "events.jsonl", root / "truth.csv")
    test = split_dataset(dataset).test
    evaluated = result.evaluated  # the held-out figures are of the fit that never saw the held-out part
    scores = evaluated.score_samples(vectorize([dataset.events[i] for i in test], result.card["feature_names"]))
    labels = dataset.labels[test]
    assert metrics["model"]["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert metrics["model"]["pr_auc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert metrics["threshold"] == evaluated.threshold_.to_dict()
    flagged = scores > evaluated.threshold_.value
    at = metrics["model"]["at_threshold"]
    assert (at["tp"], at["fp"]) == (int((flagged & (labels == 1)).sum()), int((flagged & (labels == 0)).sum()))
    assert at["recall"] == pytest.approx(at["tp"] / labels.sum())
    assert {r["rule"] for r in metrics["table"]} >= {"mean+3std", "alert_rate 0.1%", "alert_rate 2.0%"}
    assert set(metrics["baselines"]) == {"isolation_forest", "pca", "kmeans"}
    scenarios = metrics["model"]["per_scenario"]
    assert sum(s["frauds"] for s in scenarios.values()) == labels.sum()

    report = result.report_path.read_text()
    row = re.search(r"\| combined \(served\) \| ([\d.]+) \| ([\d.]+) \|", report)
    assert row and float(row[1]) == round(metrics["model"]["roc_auc"], 4)
    assert float(row[2]) == round(metrics["model"]["pr_auc"], 4)
    assert f"| fraud | {at['tp']} | {at['fn']} |" in report
    for image in ("loss.png", "scores.png", "roc.png", "pr.png"):
        assert f"({image})" in report


def test_evaluate_reruns_the_split_with_onnxruntime_only_and_says_the_served_model_saw_it(trained):
    from training.evaluate import evaluate_file

    root, result = trained
    document, assessment = evaluate_file(result.onnx_path, root / "events.jsonl", root / "truth.csv")
    about = document["about"]
    assert about["evaluated part"] == "holdout" and about["scored with"] == "onnxruntime"
    assert about["in-sample"].startswith("the served model learned from every row of this file (every row of the data")
    rerun, original = document["metrics"], result.card["metrics"]
    assert rerun["model"]["rows"] == original["model"]["rows"] and rerun["threshold"] == result.card["threshold"]
    for key in ("roc_auc", "pr_auc"):
        for name in ("isolation_forest", "pca", "kmeans"):
            assert rerun["baselines"][name][key] == pytest.approx(original["baselines"][name][key], abs=1e-9)
    assert set(rerun["parts"]) == {"autoencoder"}
    whole, _ = evaluate_file(result.onnx_path, root / "events.jsonl", root / "truth.csv", part="all")
    assert whole["metrics"]["model"]["rows"] == 4000


def test_ranking_metrics_equal_scikit_learns():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from training.evaluate import ranking

    rng = np.random.default_rng(2)
    labels = (rng.random(3000) < 0.05).astype(int)
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1)  # rounded: many ties
    assert ranking(scores, labels) == pytest.approx(
        {"roc_auc": roc_auc_score(labels, scores), "pr_auc": average_precision_score(labels, scores)}, abs=1e-12)


def test_cli_evaluate_prints_the_table_and_train_reports_bad_data(trained, tmp_path):
    from typer.testing import CliRunner

    from fraudmon.cli import app

    root, _ = trained
    result = CliRunner().invoke(app, [
        "evaluate", "--model", str(root / "models" / "small.onnx"), "--data", str(root / "events.jsonl"),
        "--truth", str(root / "truth.csv"), "--report-dir", str(tmp_path / "eval"),
    ])
    assert result.exit_code == 0, result.output
    assert "IsolationForest" in result.output and "report:" in result.output
    assert (tmp_path / "eval" / "report.md").exists()
    bad = CliRunner().invoke(app, ["train", "--data", str(card_csv(tmp_path / "cc.csv", n=100)), "--quiet"])
    assert bad.exit_code == 2 and "need at least 500" in bad.output


def test_evaluate_never_imports_tensorflow(trained):
    import subprocess
    import sys

    root, result = trained
    code = (
        "import sys; from training.evaluate import evaluate_file; "
        f"evaluate_file({str(result.onnx_path)!r}, {str(root / 'events.jsonl')!r}, {str(root / 'truth.csv')!r}); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]; "
        "sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_cli_train_on_card_holder_data_writes_model_card_and_report(tmp_path):
    from typer.testing import CliRunner

    from fraudmon.cli import app

    data = card_csv(tmp_path / "cc.csv", n=1500, fraud_every=50)
    result = CliRunner().invoke(app, [
        "train", "--data", str(data), "--name", "cc", "--out-dir", str(tmp_path / "models"), "--epochs", "2",
        "--hidden", "16,8", "--threshold-method", "alert_rate", "--threshold-param", "0.01", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "PCA reconstruction" in result.output and "report:" in result.output
    card = json.loads((tmp_path / "models" / "cc.json").read_text())
    assert card["training"]["preset"] == "creditcard"
    assert card["training"]["command"].startswith("fraudmon train --data")
    assert card["threshold"]["method"] == "alert_rate" and card["threshold"]["parameter"] == 0.01
    assert card["training"]["hyper_parameters"]["hidden"] == [16, 8]
    assert card["feature_names"][-1] == "amount_log" and card["n_features"] == 29
    assert (tmp_path / "models" / "cc-report" / "report.md").exists()


BASE_INSTALL = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "onnx", "sklearn"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from fraudmon.cli import main
sys.argv[0] = "fraudmon"
main()
"""
"""`fraudmon` as on a base install: the `train` extra's packages cannot be imported."""


def test_a_base_install_says_what_train_needs_and_evaluates_with_onnxruntime_alone(trained, tmp_path):
    import subprocess
    import sys

    root, result = trained

    def fraudmon(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BASE_INSTALL, *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    train = fraudmon("train", "--simulate", "2000", "--quiet")
    assert train.returncode == 2 and "Traceback" not in train.stdout + train.stderr
    assert train.stderr == "error: fraudmon train needs the trainer: pip install 'fraud-monitor[train]'\n"
    evaluate = fraudmon("evaluate", "--model", str(result.onnx_path), "--data", str(root / "events.jsonl"),
                        "--truth", str(root / "truth.csv"), "--report-dir", str(tmp_path / "eval"))
    assert evaluate.returncode == 0, evaluate.stdout + evaluate.stderr
    assert "baselines: left out: IsolationForest, PCA and k-means need scikit-learn: pip install " \
           "'fraud-monitor[train]'" in evaluate.stdout
    assert "(served)" in evaluate.stdout and "IsolationForest" not in evaluate.stdout.split("scikit-learn")[-1]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert "baselines" not in metrics and metrics["model"]["roc_auc"] > 0.5
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 0
