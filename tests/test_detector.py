"""`FraudDetector` on its own: fit, score_samples and predict round trips, ONNX against Keras, and refits (the
same rows and labels give the same model; a refit's threshold keeps its alert rate on rows it never saw)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.scoring import Prediction

N_ROWS = 4000
CONFIG = {"hidden": (8, 3), "epochs": 20, "batch_size": 128, "patience": 5}


def rows(n: int, seed: int, fraud_rate: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Six features driven by three hidden factors (what the autoencoder can learn), and frauds that break the
    pattern: (X float32, y)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(0).normal(size=(3, 6))
    x = rng.normal(size=(n, 3)) @ mixing + rng.normal(0, 0.1, (n, 6))
    y = (rng.random(n) < fraud_rate).astype(np.int8)
    x[y == 1] = rng.normal(0, 2.0, (int(y.sum()), 6)) + np.array([2.0, 0, 0, 0, 0, 0])
    return x.astype(np.float32), y


def detector(**options):
    from training.detector import FraudDetector
    from training.model import AutoencoderConfig

    return FraudDetector(AutoencoderConfig(**CONFIG), val_fraction=0.25, **options)


@pytest.fixture(scope="module")
def fitted():
    x, y = rows(N_ROWS, seed=1)
    return detector(threshold_method="alert_rate", threshold_param=0.01, learner="logistic").fit(x, y), x, y


def test_fit_learns_state_ending_in_underscore_and_infers_the_threshold_on_validation(fitted):
    model, x, y = fitted
    for name in ("scaler_", "autoencoder_", "head_", "combination_", "threshold_", "normal_scores_"):
        assert getattr(model, name) is not None, name
    assert model.head_.fitted_on_["frauds"] == int(y[:3000].sum() + y[3000:].sum())
    assert model.fitted_on_ == {"rows": N_ROWS, "frauds": int(y.sum()), "autoencoder_rows": int((y[:3000] == 0).sum())}
    np.testing.assert_allclose(model.scaler_.mean, x[:3000][y[:3000] == 0].mean(axis=0), rtol=1e-6)
    assert model.threshold_.method == "alert_rate" and model.threshold_.parameter == 0.01
    val_scores = model.score_samples(x[3000:])
    np.testing.assert_array_equal(model.normal_scores_, val_scores[y[3000:] == 0])
    assert model.expected_alert_rate_ == float((model.normal_scores_ > model.threshold_.value).mean()) <= 0.01
    again = model.infer_threshold(x[3000:], y[3000:], "max_f1")
    assert again is model and model.threshold_.method == "max_f1"
    model.infer_threshold(x[3000:], y[3000:])  # back to its own method
    assert model.threshold_.method == "alert_rate"


def test_score_samples_and_predict_round_trip(fitted):
    from training.evaluate import ranking

    model, _, _ = fitted
    x, y = rows(2000, seed=2)
    scores = model.score_samples(x)
    assert scores.shape == (2000,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    prediction = model.predict(x)
    assert isinstance(prediction, Prediction)
    np.testing.assert_array_equal(prediction.instance_score, scores)
    np.testing.assert_array_equal(prediction.is_outlier, scores > model.threshold_.value)
    assert prediction.feature_score.shape == (2000, 6)
    parts = model.score_parts(x)
    assert set(parts) == {"autoencoder", "head"}
    np.testing.assert_allclose(parts["autoencoder"], prediction.feature_score.mean(axis=1), rtol=1e-5)
    assert ranking(scores, y)["roc_auc"] > 0.95
    assert prediction.is_outlier[y == 1].mean() > 0.5 and prediction.is_outlier[y == 0].mean() < 0.03


def test_onnx_scores_as_keras_does(fitted, tmp_path):
    import onnxruntime as ort

    model, x, _ = fitted
    exported = model.to_onnx(tmp_path / "detector.onnx")
    assert exported.parity["rows"] == N_ROWS and exported.parity["max_rel_diff"] <= 1e-3
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    unseen, _ = rows(1500, seed=3)
    onnx_scores, onnx_errors = session.run(["score", "feature_errors"], {"features": unseen})
    keras = model.predict(unseen)
    np.testing.assert_allclose(onnx_scores, keras.instance_score, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(onnx_errors, keras.feature_score, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(onnx_scores > model.threshold_.value, keras.is_outlier)


def test_without_labels_or_with_labels_off_it_is_the_autoencoder_alone():
    x, y = rows(2400, seed=4)
    alone = detector(labels="off").fit(x, y)
    assert alone.head_ is None and alone.head_problem_ == "--labels off" and alone.score_parts(x) == {}
    unlabelled = detector().fit(x)
    assert unlabelled.head_problem_ == "no labels" and unlabelled.fitted_on_["autoencoder_rows"] == 1800
    prediction = unlabelled.predict(x[:10])
    np.testing.assert_allclose(prediction.instance_score, prediction.feature_score.mean(axis=1), rtol=1e-5)


def test_a_refit_with_no_label_added_changes_nothing(fitted):
    """Refitting on the same rows and labels gives the same model: the same scores, threshold and settings."""
    model, x, y = fitted
    first, second = model.refit(x, y), model.refit(x, y)
    unseen, _ = rows(1000, seed=5)
    np.testing.assert_array_equal(first.score_samples(unseen), second.score_samples(unseen))
    assert first.threshold_ == second.threshold_
    np.testing.assert_array_equal(first.normal_scores_, second.normal_scores_)
    assert first.config.epochs == second.config.epochs == model.autoencoder_.best_epoch
    assert first.learner_choice_ == model.learner_choice_ and type(first.head_) is type(model.head_)
    assert first.head_.to_dict()["validation_pr_auc"] == model.head_.to_dict()["validation_pr_auc"]
    assert first.combination_.alpha_ == model.combination_.alpha_
    assert first.fitted_on_["rows"] == N_ROWS and first.head_.fitted_on_ == {"rows": N_ROWS, "frauds": int(y.sum())}
    assert first.expected_alert_rate_ == model.expected_alert_rate_


def test_a_refit_keeps_its_alert_rate_on_rows_it_never_saw(fitted):
    """The refit's threshold is the fit's carried over by rank: on later normal rows it flags about the share
    the card expects (within 3 binomial standard errors plus a fifth of the rate)."""
    model, x, y = fitted
    refit = model.refit(x, y)
    later, later_y = rows(20_000, seed=6)
    normal = later[later_y == 0]
    expected = refit.expected_alert_rate_
    observed = float(refit.predict(normal).is_outlier.mean())
    tolerance = 3 * np.sqrt(expected * (1 - expected) / len(normal)) + 0.2 * expected
    assert abs(observed - expected) <= tolerance, (observed, expected, tolerance)
