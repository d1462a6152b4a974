"""Gradient-boosted trees as the supervised part: scikit-learn's `HistGradientBoostingClassifier` on the raw
features, cross-fitted on the validation slice like the logistic head (`training.hybrid.SupervisedHead`), and
its ONNX graph (skl2onnx) that `training.export.merge_trees` joins to the autoencoder's.

The trees read the raw float32 features, the very values the graph receives, and the converter's thresholds are
the largest float32 at or below scikit-learn's float64 ones, so onnxruntime and scikit-learn take the same
branch on every row and the logits differ only by float32 rounding of the leaf sum.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from sklearn.ensemble import HistGradientBoostingClassifier

from training.hybrid import CROSS_FIT_FOLDS, LOGIT_LIMIT, pr_auc, validation_folds

TREE_CAPS = {"max_iter": 50, "max_leaf_nodes": 15, "max_depth": 4}
"""Trees' size in the served graph: 50 trees of at most 15 leaves and depth 4, what the worker's drain pays for.
On the simulator's validation slice (out-of-fold PR-AUC, class-weighted) they score 0.9690, against 0.9667 for
100 trees of 31 leaves and depth 6 and 0.9653 without the depth cap (training/TUNING.md)."""
CLASS_WEIGHTS = (None, "balanced")
"""Class imbalance: unweighted, or each class weighted inversely to its frequency (validation PR-AUC picks)."""
TREES_INPUT = "features"
TREES_LOGIT = "trees_logit"
"""The ONNX graph of the trees: input `features` [batch, n], output `trees_logit` [batch, 1] (the raw score)."""


def gradient_boosting(class_weight: str | None, seed: int) -> HistGradientBoostingClassifier:
    """The supervised part's trees, capped (`TREE_CAPS`), without early stopping (the number of trees is fixed,
    so a refit on more rows builds as many)."""
    return HistGradientBoostingClassifier(**TREE_CAPS, class_weight=class_weight, early_stopping=False,
                                          random_state=seed)


def default_gradient_boosting(seed: int) -> HistGradientBoostingClassifier:
    """scikit-learn's defaults, untuned: the report's supervised reference."""
    return HistGradientBoostingClassifier(random_state=seed)


def _logits(model: HistGradientBoostingClassifier, features: np.ndarray) -> np.ndarray:
    raw = np.asarray(features, np.float32).astype(np.float64)
    return np.clip(model.decision_function(raw), -LOGIT_LIMIT, LOGIT_LIMIT)


@dataclass
class TreeHead:
    """Gradient-boosted trees on the raw features; `score` is their logit (the decision function)."""

    class_weights: tuple[str | None, ...] = CLASS_WEIGHTS
    folds: int = CROSS_FIT_FOLDS
    seed: int = 42

    def fit(self, features: np.ndarray, labels: np.ndarray, val_features: np.ndarray,
            val_labels: np.ndarray) -> TreeHead:
        """Cross-fit the validation rows (`validation_folds`) for each class weighting (`validation_logits_`: the
        chosen one's out-of-fold logits), keep the best by out-of-fold PR-AUC, and refit it on the training and
        validation rows."""
        features, val_features = np.asarray(features, np.float32), np.asarray(val_features, np.float32)
        labels, val_labels = np.asarray(labels), np.asarray(val_labels)
        folds, self.folds_ = validation_folds(val_labels, self.folds, self.seed)
        self.validation_pr_auc_: dict[str, float] = {}
        out_of_fold: dict[str | None, np.ndarray] = {}
        for weight in self.class_weights:
            logits = np.empty(len(val_labels))
            for kept, held in folds:
                model = gradient_boosting(weight, self.seed).fit(
                    np.vstack([features, val_features[kept]]), np.concatenate([labels, val_labels[kept]]))
                logits[held] = _logits(model, val_features[held])
            out_of_fold[weight], self.validation_pr_auc_[str(weight)] = logits, pr_auc(val_labels, logits)
        best = max(self.validation_pr_auc_.values())
        self.class_weight_ = next(w for w in self.class_weights if self.validation_pr_auc_[str(w)] == best)
        self.validation_logits_ = out_of_fold[self.class_weight_]
        return self._fit_all(np.vstack([features, val_features]), np.concatenate([labels, val_labels]))

    def refit(self, features: np.ndarray, labels: np.ndarray) -> TreeHead:
        """Trees with this head's class weighting (and the record of how it was chosen) fitted on `features`."""
        head = TreeHead(self.class_weights, self.folds, self.seed)
        head.class_weight_, head.validation_pr_auc_, head.folds_ = (self.class_weight_, self.validation_pr_auc_,
                                                                    self.folds_)
        return head._fit_all(np.asarray(features, np.float32), np.asarray(labels))

    def _fit_all(self, features: np.ndarray, labels: np.ndarray) -> TreeHead:
        self.model_ = gradient_boosting(self.class_weight_, self.seed).fit(features, labels)
        self.fitted_on_ = {"rows": int(len(labels)), "frauds": int(np.sum(labels))}
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """The trees' logit per row (clipped to +-`LOGIT_LIMIT`)."""
        return _logits(self.model_, features)

    def to_onnx(self, n_features: int) -> onnx.ModelProto:
        """The trees as an ONNX graph (`TREES_INPUT` -> `TREES_LOGIT`)."""
        return trees_to_onnx(self.model_, n_features)

    def to_dict(self) -> dict[str, Any]:
        return {"model": "gradient-boosted trees (scikit-learn HistGradientBoostingClassifier)",
                "inputs": "raw features", "caps": dict(TREE_CAPS), "class_weight": str(self.class_weight_),
                "class_weight_tried": [str(w) for w in self.class_weights],
                "fitted_on": {**self.fitted_on_, "parts": "training part and validation slice"},
                "chosen_on": f"out-of-fold scores of the validation slice ({self.folds_})",
                "validation_pr_auc": {w: round(v, 6) for w, v in self.validation_pr_auc_.items()}}


@contextmanager
def _float32_trees() -> Iterator[None]:
    """skl2onnx 1.20 writes a leaf's missing-value flag as a Python bool, which protobuf 7 refuses in an INTS
    attribute, and rounds a HistGradientBoosting threshold to the nearest float32 (x <= t can then differ from
    scikit-learn's float64 comparison for a float32 x). While converting, its `add_node` gets an int flag and
    its own `sklearn_threshold` adjustment, which it applies to the other scikit-learn trees."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        kwargs["nodes_missing_value_tracks_true"] = int(kwargs.get("nodes_missing_value_tracks_true", 0))
        kwargs["adjust_threshold_for_sklearn"] = kwargs.get("dtype") == np.float32
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def trees_to_onnx(model: HistGradientBoostingClassifier, n_features: int) -> onnx.ModelProto:
    """skl2onnx's graph of the classifier with raw scores (no sigmoid), reduced to the fraud class's column:
    `TREES_INPUT` float32 [batch, n] -> `TREES_LOGIT` float32 [batch, 1]."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with _float32_trees():
        proto = convert_sklearn(model, initial_types=[(TREES_INPUT, FloatTensorType([None, n_features]))],
                                target_opset={"": 17, "ai.onnx.ml": 3},
                                options={id(model): {"raw_scores": True, "zipmap": False}})
    graph = proto.graph
    scores = graph.output[1].name
    graph.node.extend([
        onnx.helper.make_node("Constant", [], ["fraud_column"], value=onnx.helper.make_tensor(
            "fraud_column", onnx.TensorProto.INT64, [1], [1])),
        onnx.helper.make_node("Gather", [scores, "fraud_column"], [TREES_LOGIT], axis=1)])
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(TREES_LOGIT, onnx.TensorProto.FLOAT, ["batch", 1]))
    return proto
