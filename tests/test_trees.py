"""Gradient-boosted trees as the supervised part: chosen on validation where they beat the logistic head, and
merged into the one ONNX graph that matches the Python models."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.model_selection import StratifiedKFold

pytest.importorskip("tensorflow")
pytest.importorskip("skl2onnx")

from fraudmon.core.modelcard import ONNX_INPUT, ONNX_OUTPUTS  # noqa: E402
from training.detector import FraudDetector  # noqa: E402
from training.export import SCORE_CONTRIBUTIONS  # noqa: E402
from training.hybrid import pr_auc, pr_auc_difference_se, validation_folds  # noqa: E402
from training.model import AutoencoderConfig  # noqa: E402
from training.trees import TREES_LOGIT, TreeHead, gradient_boosting, trees_to_onnx  # noqa: E402


def interaction_table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frauds where two features share a sign and are both large: ordinary-looking rows (the autoencoder cannot
    tell), and no line separates them (the logistic head cannot either); trees can."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = ((x[:, 0] * x[:, 1] > 1.2) & (np.abs(x[:, 2]) < 1.0)).astype(np.int8)
    return x, y


def burst_table(n: int, bursts: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows in time order where frauds come in bursts of `size` rows, each burst its own tight cluster of
    ordinary-looking values: nothing that one burst teaches holds for the next."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), np.zeros(n, np.int8)
    for start in rng.choice(np.arange(0, n - size, size), bursts, replace=False):
        x[start:start + size] = rng.normal(size=2) + rng.normal(0, 0.02, size=(size, 2))
        y[start:start + size] = 1
    return x.astype(np.float32), y


def test_validation_folds_are_blocks_of_consecutive_rows_unless_the_frauds_fall_in_one() -> None:
    labels = np.zeros(1000, np.int8)
    labels[[50, 300, 520, 700, 950]] = 1
    folds, how = validation_folds(labels, 5, seed=0)
    assert how == "5 blocks of consecutive validation rows"
    assert [held.tolist() for _, held in folds] == [list(range(k * 200, (k + 1) * 200)) for k in range(5)]
    assert all(np.intersect1d(kept, held).size == 0 and kept.size + held.size == 1000 for kept, held in folds)

    bunched = np.zeros(1000, np.int8)
    bunched[[10, 20, 30, 40, 50]] = 1
    folds, how = validation_folds(bunched, 5, seed=0)
    assert "stratified shuffled" in how and "one block" in how
    assert all(bunched[kept].sum() == 4 and bunched[held].sum() == 1 for kept, held in folds)


def test_shuffled_folds_flatter_trees_that_memorise_bursts_and_blocks_of_time_do_not() -> None:
    x, y = burst_table(6000, 10, 40, seed=4)
    train, val = slice(0, 4000), slice(4000, 6000)
    head = TreeHead(class_weights=("balanced",), seed=3).fit(x[train], y[train], x[val], y[val])
    blocked = pr_auc(y[val], head.validation_logits_)

    shuffled_logits = np.empty(2000)
    for kept, held in StratifiedKFold(5, shuffle=True, random_state=3).split(x[val], y[val]):
        model = gradient_boosting("balanced", 3).fit(np.vstack([x[train], x[val][kept]]),
                                                     np.concatenate([y[train], y[val][kept]]))
        shuffled_logits[held] = model.decision_function(x[val][held].astype(np.float64))
    shuffled = pr_auc(y[val], shuffled_logits)
    assert shuffled > 0.7, f"a burst split across folds is recognised by its own members ({shuffled:.3f})"
    assert blocked < 0.2, f"unseen bursts share nothing, so validation must not promise more ({blocked:.3f})"
    assert "blocks of consecutive" in head.to_dict()["chosen_on"]


def test_the_lead_of_one_learner_is_weighed_by_a_block_bootstrap_that_keeps_bursts_whole() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros(2000, int)
    for start in rng.choice(np.arange(0, 1980, 40), 10, replace=False):  # 10 bursts of 8 frauds
        labels[start:start + 8] = 1
    first, second = rng.normal(size=2000) + 2 * labels, rng.normal(size=2000) + 2 * labels
    assert pr_auc_difference_se(labels, first, first, seed=0) == 0.0
    # the second learner misses whole bursts: a lead that depends on few bursts has a wide error
    missed = np.isin(np.arange(2000) // 40, np.flatnonzero(np.bincount(np.arange(2000) // 40, labels))[:3])
    second = np.where(missed & (labels == 1), rng.normal(size=2000), second)
    lead = pr_auc(labels, first) - pr_auc(labels, second)
    by_blocks = pr_auc_difference_se(labels, first, second, seed=0)
    by_rows = pr_auc_difference_se(labels, first, second, seed=0, blocks=len(labels))
    assert lead > 0.1 and by_blocks > 1.3 * by_rows > 0
    assert pr_auc_difference_se(np.zeros(50, int), first[:50], second[:50], seed=0) == np.inf


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
