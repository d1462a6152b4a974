"""Hybrid scoring: the supervised head and its combination with the autoencoder in one ONNX graph, chosen on the
validation slice; the autoencoder alone without labels or with too few frauds; the side-by-side report; the
card's parts and expected alert rate; candidates that `fraudmon promote` finds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fraudmon.cli import app
from fraudmon.core.eventfiles import write_events, write_ground_truth
from tests.conftest import CREDITCARD, needs_creditcard
from training.hybrid import MIN_HEAD_FRAUDS, MIN_VALIDATION_FRAUDS, Combination, SupervisedHead, head_problem
from training.simulate import SimulationConfig, simulate

TINY = {"epochs": 3, "hidden": (16, 8)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hybrid")
    events, truth = simulate(SimulationConfig(n_events=4000, n_accounts=200, fraud_rate=0.03, seed=3))
    write_events(root / "events.jsonl", events)
    write_ground_truth(root / "truth.csv", truth)
    return root


def _train(data: Path, out: Path, **request):
    from training.train import TrainRequest, train

    return train(TrainRequest(data=data / "events.jsonl", truth=data / "truth.csv", out_dir=out, overrides=TINY,
                              verbose=0, command="test", **request))


@pytest.fixture(scope="module")
def hybrid(data, tmp_path_factory):
    return _train(data, tmp_path_factory.mktemp("hybrid-model"), learner="logistic")


def test_head_and_combination_are_sklearn_style_and_chosen_on_validation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    y = (x[:, 0] + rng.normal(0, 0.5, 3000) > 2.2).astype(int)
    head = SupervisedHead().fit(x[:2000], y[:2000], x[2000:], y[2000:])
    assert head.c_ in head.c_grid and set(head.validation_pr_auc_) == set(head.c_grid)
    assert head.coef_[0] > 0 and abs(head.coef_[0]) > 5 * np.abs(head.coef_[1:]).max()
    assert head.fitted_on_ == {"rows": 3000, "frauds": int(y.sum())}
    logits = head.score(x)
    out_of_fold = head.validation_logits_
    assert out_of_fold.shape == (1000,) and not np.allclose(out_of_fold, logits[2000:]), \
        "validation rows are scored by heads fitted without them"
    assert abs(np.corrcoef(out_of_fold, logits[2000:])[0, 1]) > 0.9
    useless = rng.gamma(2.0, 1.0, 3000)  # an "autoencoder" that knows nothing
    combination = Combination().fit(useless[2000:], out_of_fold, y[2000:])
    assert combination.alpha_ <= 0.2, "validation PR-AUC must favour the informative head"
    score = combination.score(useless, logits)
    assert np.isfinite(score).all() and (score > 0).all()
    alone = Combination(alpha_grid=(1.0,)).fit(useless[2000:], logits[2000:], y[2000:])
    np.testing.assert_allclose(alone.score(useless, logits), useless + 1e-6, rtol=1e-9)


def test_head_problem_says_why_there_is_no_head():
    labels = np.zeros(100, dtype=np.int8)
    rows, val = np.arange(60), np.arange(60, 80)
    assert head_problem(labels, rows, val, "off") == "--labels off"
    assert head_problem(None, rows, val, "auto") == "no labels"
    labels[:MIN_HEAD_FRAUDS - 2] = 1
    labels[60] = 1
    assert head_problem(labels, rows, val, "auto").startswith(
        f"{MIN_HEAD_FRAUDS - 1} frauds in the training and validation parts, fewer than the {MIN_HEAD_FRAUDS}")
    labels[:MIN_HEAD_FRAUDS] = 1
    assert head_problem(labels, rows, val, "auto").startswith(
        f"1 frauds among the 20 validation rows: choosing the head's regularisation needs at least "
        f"{MIN_VALIDATION_FRAUDS} frauds")
    labels[:3] = 0  # the training part may hold fewer frauds than the head needs: the validation slice adds its own
    labels[60:60 + MIN_VALIDATION_FRAUDS] = 1
    assert head_problem(labels, rows, val, "auto") is None
    labels[60:78] = 1
    assert "5 normal rows" in head_problem(labels, rows, val, "auto")


def test_one_graph_scores_as_autoencoder_head_and_combination_together(hybrid, data):
    """The served ONNX score is the combination of the autoencoder (mean of feature_errors) and the head's logit."""
    from stream_app.features import vectorize
    from stream_app.scoring import load_model
    from training.data import load_dataset

    card = hybrid.card
    parts = card["parts"]
    assert parts["head"]["fitted_on"]["frauds"] >= MIN_HEAD_FRAUDS and parts["head"]["C"] in parts["head"]["C_tried"]
    assert parts["combination"].startswith("score = exp(") and "head_logit" in parts["combination"]
    weights = parts["combination_weights"]
    assert weights["alpha"] in weights["alpha_tried"] and weights["validation_pr_auc"][str(weights["alpha"])] == \
        max(weights["validation_pr_auc"].values())
    assert card["parity"]["rows"] >= 1000 and card["parity"]["max_abs_diff"] <= 1e-4 + 1e-4 * 1e3
    model = load_model(hybrid.onnx_path)
    x = vectorize(load_dataset(data / "events.jsonl").events, model.feature_names)
    scores, errors = model.score(x)
    ae = errors.mean(axis=1).astype(np.float64)
    log_score = np.log(scores.astype(np.float64))
    alpha, beta, gamma = weights["alpha"], weights["beta"], weights["gamma"]
    logits = (log_score - alpha * np.log(ae + 1e-6) - gamma) / beta
    assert np.isfinite(logits).all() and not np.allclose(scores, ae, rtol=1e-3)
    assert card["metrics"]["model"]["roc_auc"] >= 0.9


def test_report_puts_parts_and_baselines_side_by_side(hybrid):
    metrics = hybrid.card["metrics"]
    assert set(metrics["parts"]) == {"autoencoder", "head"}
    assert set(metrics["baselines"]) == {"isolation_forest", "pca", "kmeans"}
    for summary in [metrics["model"], *metrics["parts"].values(), *metrics["baselines"].values()]:
        assert set(summary["recall_at_alert_rate"]) == {"0.1%", "0.5%", "1.0%"}
        assert summary["roc_auc"] is not None and summary["pr_auc"] is not None
    assert set(metrics["validation"]) == {"model", "autoencoder", "head", "isolation_forest", "pca", "kmeans"}
    assert metrics["parts"]["head"]["per_scenario"]
    reference = metrics["reference"]["gradient_boosting"]
    assert reference["rows"] == metrics["model"]["rows"] and reference["pr_auc"] is not None
    report = hybrid.report_path.read_text()
    for label in ("combined (served)", "autoencoder alone", "head alone", "IsolationForest", "PCA reconstruction",
                  "k-means distance", "recall at 0.5%", "false-flag rate", "## Recall per fraud scenario",
                  "| default gradient boosting (reference) |"):
        assert label in report, label
    row = next(line for line in report.splitlines() if line.startswith("| combined (served) |"))
    assert f"| {metrics['model']['pr_auc']:.4f} |" in row
    gap = metrics["model"]["pr_auc"] - reference["pr_auc"]
    assert "The served model minus the reference: ROC-AUC " in report and f"PR-AUC {gap:+.4f}" in report
    learner = hybrid.card["parts"]["head"]["learner"]
    assert learner["chosen"] == "logistic" and learner["why"] == "logistic: the only learner asked for"


@pytest.mark.slow
def test_expected_alert_rate_is_measured_on_unseen_normal_rows_for_every_threshold_method(data, hybrid, tmp_path):
    """The card's expected alert rate is the share of normal validation rows above the threshold of the fit that
    never saw them, max_f1 too; the served model's threshold is that one carried into its units."""
    from stream_app.features import vectorize
    from training.data import load_dataset, split_dataset

    dataset = load_dataset(data / "events.jsonl", data / "truth.csv")
    split = split_dataset(dataset)
    val_normal = split.val[dataset.labels[split.val] == 0]
    for result in (hybrid, _train(data, tmp_path, threshold_method="max_f1")):
        evaluated = result.evaluated
        x = vectorize([dataset.events[i] for i in val_normal], result.card["feature_names"])
        scores = evaluated.score_samples(x)
        assert result.card["expected_alert_rate"] == pytest.approx(
            float((scores > evaluated.threshold_.value).mean()), abs=1e-9)
        assert result.card["threshold"]["method"] == evaluated.threshold_.method
        assert result.card["threshold"]["value"] == result.served.threshold_.value
    assert hybrid.card["threshold"]["method"] == "alert_rate" and hybrid.card["threshold"]["parameter"] == 0.005
    assert "feature_quantiles" in hybrid.card and len(hybrid.card["feature_quantiles"]) == hybrid.card["n_features"]


@pytest.mark.slow
def test_the_served_threshold_keeps_its_alert_rate_on_a_later_slice(tmp_path):
    """Trained on the first 80% of the events, the served model (refitted on all of them) flags about the card's
    expected alert rate of the later 20%'s normal rows: within three binomial standard errors of the later
    slice's size plus a fifth of the rate."""
    from stream_app.features import vectorize
    from stream_app.scoring import load_model
    from training.train import TrainRequest, train

    events, truth = simulate(SimulationConfig(n_events=12_000, n_accounts=300, fraud_rate=0.03, seed=3))
    cut = int(len(events) * 0.8)
    assert max(e.timestamp_ms for e in events[:cut]) <= min(e.timestamp_ms for e in events[cut:])
    write_events(tmp_path / "events.jsonl", events[:cut])
    write_ground_truth(tmp_path / "truth.csv", truth[:cut])
    result = train(TrainRequest(data=tmp_path / "events.jsonl", truth=tmp_path / "truth.csv", out_dir=tmp_path,
                                overrides=TINY, threshold_param=0.05, verbose=0))
    model = load_model(result.onnx_path)
    later = [event for event, label in zip(events[cut:], truth[cut:], strict=True) if not label.label]
    scores, _ = model.score(vectorize(later, model.feature_names))
    expected, observed = result.card["expected_alert_rate"], float((scores > model.threshold).mean())
    tolerance = 3 * np.sqrt(expected * (1 - expected) / len(later)) + 0.2 * expected
    assert abs(observed - expected) <= tolerance, (observed, expected, tolerance)


def test_without_labels_or_head_the_model_is_the_autoencoder_alone(data, tmp_path):
    from stream_app.scoring import load_model

    result = _train(data, tmp_path, labels="off")
    parts = result.card["parts"]
    assert parts.get("head") is None and parts["head_skipped"] == "--labels off"
    assert "parts" not in result.card["metrics"] and "autoencoder (served)" in result.report_path.read_text()
    model = load_model(result.onnx_path)
    x = np.random.default_rng(1).normal(size=(50, model.card.n_features)).astype(np.float32)
    scores, errors = model.score(x)
    np.testing.assert_allclose(scores, errors.mean(axis=1), rtol=1e-5)


def test_train_writes_a_candidate_that_promote_finds(data, tmp_path):
    from fraudmon.core.config import load_settings
    from fraudmon.tools.models import resolve_candidate

    served = tmp_path / "models" / "default.onnx"
    env = {"FRAUDMON_MODEL": str(served), "FRAUDMON_CONFIG": str(tmp_path / "none.yaml")}
    (tmp_path / "none.yaml").write_text("{}\n")
    result = CliRunner().invoke(app, ["train", "--data", str(data / "events.jsonl"), "--truth",
                                      str(data / "truth.csv"), "--name", "mymodel", "--epochs", "2", "--hidden",
                                      "8,4", "--supervised", "logistic", "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    (candidate,) = (tmp_path / "models" / "candidates").iterdir()
    assert candidate.name.startswith("mymodel-") and not served.exists(), "the served model is never replaced"
    assert {p.name for p in candidate.iterdir()} == {"mymodel.onnx", "mymodel.json", "mymodel-report"}
    card = json.loads((candidate / "mymodel.json").read_text())
    assert candidate.name == f"mymodel-{card['version']}"
    assert f"fraudmon promote {candidate.name} --data" in result.output
    settings = load_settings(environ=env)
    assert resolve_candidate(settings, candidate.name) == candidate / "mymodel.onnx"


@pytest.mark.slow
@needs_creditcard
def test_defaults_on_the_card_holder_sample_train_a_hybrid_that_serves(tmp_path):
    """`fraudmon train --data data/creditcard_sample.csv.gz` with defaults: 12 frauds before the held-out part
    (3 in the training part), where the head's choices are made on out-of-fold validation scores; the served
    head then learns from all 38."""
    from stream_app.features import vectorize
    from stream_app.scoring import load_model
    from training.data import load_dataset

    result = CliRunner().invoke(app, ["train", "--data", str(CREDITCARD), "--out-dir", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "supervised part: logistic head or gradient-boosted trees, chosen on out-of-fold scores of the " \
        "validation slice" in result.output
    assert "served model: refitted on all 9,528 rows" in result.output
    card = json.loads((tmp_path / "default.json").read_text())
    head = card["parts"]["head"]
    assert head["fitted_on"]["frauds"] == 38 and "out-of-fold" in head["chosen_on"]
    choice = head["learner"]
    lead = choice["trees_lead"]  # the trees only when they lead by more than one standard error
    assert lead["pr_auc"] == pytest.approx(choice["validation_pr_auc_combined"]["trees"]
                                           - choice["validation_pr_auc_combined"]["logistic"], abs=2e-6)
    assert 0 < lead["standard_error"] < 1
    assert choice["chosen"] == ("trees" if lead["pr_auc"] > lead["standard_error"] else "logistic")
    assert card["training"]["split"]["train"]["frauds"] + card["training"]["split"]["val"]["frauds"] == 12
    assert card["parts"]["combination"].startswith("score = exp(s), s = ")
    metrics = card["metrics"]
    weights = card["parts"]["combination_weights"]  # chosen on validation, whatever the held-out part says
    assert weights["validation_pr_auc"][str(weights["alpha"])] == max(weights["validation_pr_auc"].values())
    combined = metrics["model"]
    assert combined["roc_auc"] >= 0.96 and combined["at_threshold"]["recall"] >= 0.9
    report = (tmp_path / "default-report" / "report.md").read_text()
    for row in ("## Held-out part, side by side", "| combined (served) |", "| head alone |", "| k-means distance |"):
        assert row in report
    model = load_model(tmp_path / "default.onnx")
    events = load_dataset(CREDITCARD).events[-2000:]
    scores, _ = model.score(vectorize(events, model.feature_names))
    assert np.isfinite(scores).all() and (scores > model.threshold).sum() > 0


def test_combination_scale_survives_logits_that_most_normal_rows_share():
    """Trees give most normal rows one identical logit: the interquartile range is 0, and a scale taken from it
    alone would multiply float32 rounding of the logit into the score."""
    rng = np.random.default_rng(2)
    labels = (rng.random(4000) < 0.02).astype(int)
    logits = np.where(rng.random(4000) < 0.8, -10.7289, rng.normal(-8, 2, 4000)) + 9 * labels
    ae = rng.gamma(2.0, 1.0, 4000)
    combination = Combination().fit(ae, logits, labels)
    normal = logits[labels == 0]
    assert np.percentile(normal, 75) == np.percentile(normal, 25)
    assert combination.beta_ <= (1 - combination.alpha_) * 10, combination.to_dict()
    shifted = combination.score(ae, logits + 2e-6) / combination.score(ae, logits)
    assert np.abs(shifted - 1).max() < 1e-4, "a float32 step of the logit stays a float32-sized change"
