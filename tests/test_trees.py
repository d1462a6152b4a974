"""Gradient-boosted trees as the supervised part: chosen on validation where they beat the logistic head, and
merged into the one ONNX graph that matches the Python models."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("skl2onnx")

from fraudmon.core.modelcard import ONNX_INPUT, ONNX_OUTPUTS  # noqa: E402
from training.detector import FraudDetector  # noqa: E402
from training.export import SCORE_CONTRIBUTIONS  # noqa: E402
from training.model import AutoencoderConfig  # noqa: E402
from training.trees import TREES_LOGIT, TreeHead, trees_to_onnx  # noqa: E402


def interaction_table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frauds where two features share a sign and are both large: ordinary-looking rows (the autoencoder cannot
    tell), and no line separates them (the logistic head cannot either); trees can."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = ((x[:, 0] * x[:, 1] > 1.2) & (np.abs(x[:, 2]) < 1.0)).astype(np.int8)
    return x, y


def test_trees_graph_matches_scikit_learn_on_split_values() -> None:
    x, y = interaction_table(2000, 1)
    head = TreeHead(class_weights=("balanced",), folds=2, seed=3).fit(x[:1500], y[:1500], x[1500:], y[1500:])
    session = ort.InferenceSession(trees_to_onnx(head.model_, 6).SerializeToString())
    # every threshold's own float32 neighbours: where rounding a float64 threshold to float32 would flip a branch
    thresholds = np.concatenate([p[0].nodes["num_threshold"][~p[0].nodes["is_leaf"].astype(bool)]
                                 for p in head.model_._predictors])
    edges = np.concatenate([np.float32(thresholds), np.nextafter(np.float32(thresholds), np.float32(np.inf))])
    probe = np.tile(x[:1], (len(edges), 1))
    probe[:, 0] = probe[:, 1] = probe[:, 2] = edges
    for rows in (x, probe):
        got = session.run([TREES_LOGIT], {"features": rows})[0][:, 0]
        np.testing.assert_allclose(got, head.score(rows), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_validation_picks_trees_where_they_beat_a_linear_head_and_the_merged_graph_matches(tmp_path) -> None:
    x, y = interaction_table(5000, 0)
    detector = FraudDetector(AutoencoderConfig(hidden=(8, 4), epochs=5, batch_size=128), val_fraction=0.3,
                             threshold_method="alert_rate", threshold_param=0.02).fit(x, y)
    choice = detector.learner_choice_
    assert choice["chosen"] == "trees", choice
    assert choice["validation_pr_auc_combined"]["trees"] > choice["validation_pr_auc_combined"]["logistic"] + 0.2
    assert isinstance(detector.head_, TreeHead)
    assert detector.parts()["head"]["learner"]["chosen"] == "trees"

    exported = detector.to_onnx(tmp_path / "m.onnx")
    assert exported.parity["rows"] >= 1000 and exported.parity["max_rel_diff"] < 1e-3
    session = ort.InferenceSession(str(exported.path))
    assert [i.name for i in session.get_inputs()] == [ONNX_INPUT]
    assert [o.name for o in session.get_outputs()] == [*ONNX_OUTPUTS, SCORE_CONTRIBUTIONS]
    fresh, fresh_y = interaction_table(2000, 9)
    scores, errors, contributions = session.run(None, {ONNX_INPUT: fresh})
    python_scores, python_errors, python_contributions = detector.outputs(fresh)
    np.testing.assert_allclose(scores, python_scores, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(errors, python_errors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(contributions, python_contributions, rtol=1e-3, atol=1e-4)
    # the frauds are ordinary rows: what flags them is the supervised part
    flagged = scores > detector.threshold_.value
    assert (contributions[flagged & (fresh_y == 1), 1] > contributions[flagged & (fresh_y == 1), 0]).mean() > 0.9
