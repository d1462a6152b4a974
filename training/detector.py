"""The fraud detector as one estimator, with scikit-learn's verbs and alibi-detect's `OutlierAE` shape: `fit`,
`infer_threshold`, `score_samples`, `predict` (the worker's `Prediction`), `refit` on every row with the
settings a fit chose, and `to_onnx` (parity-checked against Keras).

Parameters are set in `__init__`; what fitting learns ends in `_`: `columns_` (the money-shaped columns taken
to logs), `scaler_`, `autoencoder_`, `head_` (logistic `SupervisedHead` or `TreeHead`, chosen on validation),
`combination_` (None without a head), `threshold_`, and the normal validation scores behind the threshold
(`normal_scores_`, `expected_alert_rate_`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from fraudmon.core.errors import TrainingError
from stream_app.scoring import Prediction
from training.data import LogColumns, StandardScaler, split_point
from training.export import check_parity, convert, merge_trees, sha256_bytes
from training.hybrid import Combination, SupervisedHead, head_inputs, head_problem, pr_auc_difference_se
from training.model import AutoencoderConfig, TrainedAutoencoder, predict, serving_graph, train_autoencoder
from training.threshold import choose_threshold
from training.trees import TreeHead

PARITY_MAX_ROWS = 20_000
PARITY_MIN_ROWS = 1000
CARRY_LEVELS = np.unique(np.r_[np.linspace(0.0, 1.0, 1001), 1 - np.geomspace(1e-3, 1e-6, 13)])
"""The ranks at which `carry_over` matches two fits' scores: every 0.1%, and finer in the top 0.1%."""
TINY_SCORE = 1e-30
LEARNERS = ("auto", "logistic", "trees")
"""The supervised part: `auto` fits both and keeps the one whose combined validation PR-AUC is higher (ties: the
logistic head, the simpler), or one of them only."""


@dataclass(frozen=True)
class OnnxExport:
    """A checked graph on disk: its path, SHA-256 and the parity check's result."""

    path: Path
    sha256: str
    parity: dict[str, float | int]


def parity_rows(x: np.ndarray, seed: int) -> np.ndarray:
    """Up to 20,000 rows spread over the data; small data is resampled with jitter to reach 1,000."""
    if len(x) >= PARITY_MIN_ROWS:
        return x[np.linspace(0, len(x) - 1, min(len(x), PARITY_MAX_ROWS)).astype(int)]
    rng = np.random.default_rng(seed)
    extra = x[rng.integers(0, len(x), PARITY_MIN_ROWS - len(x))]
    return np.concatenate([x, extra + rng.normal(0, 0.05, extra.shape).astype(np.float32)])


def carry_over(seen_before: np.ndarray, seen_after: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Maps a score of one fit to the units of another: the second fit's score at the same rank among the normal
    rows each fit trained on (matched at `CARRY_LEVELS`, interpolated in log space, shifted beyond the ends)."""
    before, after = (np.log(np.maximum(np.quantile(np.asarray(s, np.float64), CARRY_LEVELS), TINY_SCORE))
                     for s in (seen_before, seen_after))

    def carry(scores: np.ndarray) -> np.ndarray:
        s = np.log(np.maximum(np.asarray(scores, np.float64), TINY_SCORE))
        inside = np.interp(s, before, after)
        return np.exp(np.where(s > before[-1], after[-1] + s - before[-1],
                               np.where(s < before[0], after[0] + s - before[0], inside)))

    return carry


def _rows(x: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise TrainingError(f"X must be [rows, features], got shape {list(x.shape)}")
    if y is not None:
        y = np.asarray(y).astype(np.int8).ravel()
        if len(y) != len(x):
            raise TrainingError(f"X has {len(x)} rows but y has {len(y)} labels")
    return x, y


class FraudDetector:
    """Autoencoder on normal rows, plus a supervised head when labels allow one, combined into one score in the
    autoencoder's units (`training.hybrid`). `score_samples` is the anomaly score the worker computes: higher is
    more anomalous (the opposite of scikit-learn's outlier detectors).

    `labels`: `auto` fits a head when the labels allow one, `off` never does. `val_fraction`: the last share of
    the rows given to `fit` is the validation slice. `threshold_method`/`threshold_param`: how `fit` infers the
    threshold (`training.threshold`). `learner`: the supervised part (`LEARNERS`)."""

    def __init__(self, config: AutoencoderConfig | None = None, *, labels: str = "auto", val_fraction: float = 0.2,
                 threshold_method: str = "mean_std", threshold_param: float | None = None, verbose: int = 0,
                 learner: str = "auto") -> None:
        if learner not in LEARNERS:
            raise TrainingError(f"unknown supervised learner {learner!r}: use {', '.join(LEARNERS)}")
        self.config = config or AutoencoderConfig()
        self.labels = labels
        self.learner = learner
        self.val_fraction = val_fraction
        self.threshold_method = threshold_method
        self.threshold_param = threshold_param
        self.verbose = verbose

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> FraudDetector:  # noqa: N803 (scikit-learn's names)
        """Fit on rows in time order, oldest first (`y`: 1 = fraud). The last `val_fraction` of them is the
        validation slice: it early-stops the autoencoder, chooses the head's C and the combination (on out-of-fold
        scores) and the threshold (`infer_threshold`). The autoencoder learns from the normal rows before it
        (every row without `y`), the head from every labelled row."""
        x, y = _rows(X, y)
        cut = split_point(len(x), self.val_fraction)
        train, val = np.arange(cut), np.arange(cut, len(x))
        normal_train, normal_val = (train, val) if y is None else (train[y[train] == 0], val[y[val] == 0])
        if not normal_train.size or not normal_val.size:
            raise TrainingError(f"fit needs normal rows both before and in the validation slice (the last "
                                f"{self.val_fraction:.0%} of the {len(x)} rows)")
        self.columns_ = LogColumns.fit(x[normal_train])
        self.scaler_ = StandardScaler.fit(self.columns_(x[normal_train]))
        self.autoencoder_ = self._train_autoencoder(x[normal_train], x[normal_val], self.config)
        self._graph = self._autoencoder_graph = None
        self.head_problem_ = head_problem(y, train, val, self.labels)
        self.head_, self.combination_, self.learner_choice_ = None, None, None
        if self.head_problem_ is None:
            self._fit_supervised(x, y, train, val)
        self.fitted_on_ = {"rows": len(x), "frauds": None if y is None else int(y.sum()),
                           "autoencoder_rows": int(normal_train.size)}
        self._fitted(x, normal_train)
        return self.infer_threshold(x[val], None if y is None else y[val])

    def refit(self, X: np.ndarray, y: np.ndarray | None = None) -> FraudDetector:  # noqa: N803
        """A new detector fitted on every row of `X` with the settings this fit chose: the autoencoder for its
        best number of epochs on every normal row, the head with its C on every labelled row, the combination with
        its alpha. Its threshold and normal scores are this fit's carried into its units (`carry_over`), so the
        expected alert rate stays the one measured on rows this fit never saw."""
        x, y = _rows(X, y)
        if self.head_ is not None and y is None:
            raise TrainingError("this detector has a supervised head: refit it with labels (y)")
        normal = np.arange(len(x)) if y is None else np.flatnonzero(y == 0)
        new = FraudDetector(replace(self.config, epochs=self.autoencoder_.best_epoch), labels=self.labels,
                            val_fraction=self.val_fraction, threshold_method=self.threshold_method,
                            threshold_param=self.threshold_param, verbose=self.verbose, learner=self.learner)
        new.columns_ = self.columns_
        new.scaler_ = StandardScaler.fit(new.columns_(x[normal]))
        new.autoencoder_ = new._train_autoencoder(x[normal], None, new.config)
        new._graph = new._autoencoder_graph = None
        new.head_problem_, new.head_, new.combination_ = self.head_problem_, None, None
        new.learner_choice_ = self.learner_choice_
        if self.head_ is not None:
            ae_scores, inputs = new._autoencoder_parts(x)
            features = self._head_features(x, inputs)
            new.head_ = self.head_.refit(features, y)
            new.combination_ = self.combination_.refit(ae_scores, new.head_.score(features), y)
        new.fitted_on_ = {"rows": len(x), "frauds": None if y is None else int(y.sum()),
                          "autoencoder_rows": int(normal.size)}
        new._fitted(x, normal)
        carry = carry_over(self.seen_normal_scores_, new.seen_normal_scores_)
        new.threshold_ = replace(self.threshold_, value=float(carry(np.array([self.threshold_.value]))[0]))
        new.normal_scores_ = carry(self.normal_scores_)
        new.expected_alert_rate_ = self.expected_alert_rate_
        return new

    def infer_threshold(self, X: np.ndarray, y: np.ndarray | None = None, method: str | None = None,  # noqa: N803
                        parameter: float | None = None) -> FraudDetector:
        """Choose `threshold_` on rows the detector did not learn from (`y` needed by `max_f1`; without it every
        row counts as normal); `normal_scores_` and `expected_alert_rate_` are their normal rows' scores and share
        above it."""
        x, y = _rows(X, y)
        method = method or self.threshold_method
        parameter = self.threshold_param if parameter is None and method == self.threshold_method else parameter
        scores = self.score_samples(x)
        normal = scores if y is None else scores[y == 0]
        self.threshold_ = choose_threshold(method, normal, parameter, scores, y)
        self.normal_scores_ = normal.astype(np.float64)
        self.expected_alert_rate_ = float((normal > self.threshold_.value).mean())
        return self

    def outputs(self, X: np.ndarray) -> list[np.ndarray]:  # noqa: N803
        """What the exported graph computes (float32): anomaly scores `[n]`, per-feature errors `[n, f]` and,
        with a supervised part, each part's contribution `[n, 2]` (autoencoder, supervised)."""
        x = _rows(X, None)[0]
        feed = [x, self.head_.score(x)[:, None]] if isinstance(self.head_, TreeHead) else x
        return predict(self._serving(), feed)

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        """Anomaly scores `[n]` and per-feature errors `[n, f]` (float32), as the exported graph computes them."""
        scores, errors, *_ = self.outputs(X)
        return scores, errors

    def score_samples(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """The anomaly score of each row (float32; higher is more anomalous)."""
        return self.score(X)[0]

    def score_parts(self, X: np.ndarray) -> dict[str, np.ndarray]:  # noqa: N803
        """With a head, the scores of the parts alone (`autoencoder`, `head` logit); empty without."""
        if self.head_ is None:
            return {}
        x = _rows(X, None)[0]
        ae_scores, inputs = self._autoencoder_parts(x)
        return {"autoencoder": ae_scores, "head": self.head_.score(self._head_features(x, inputs))}

    def predict(self, X: np.ndarray) -> Prediction:  # noqa: N803
        """Outlier verdicts against `threshold_`, scores and per-feature errors: what the worker decides with."""
        scores, errors = self.score(X)
        return Prediction(scores > self.threshold_.value, scores, errors)

    def to_onnx(self, path: Path, X: np.ndarray | None = None) -> OnnxExport:  # noqa: N803
        """Write the serving graph to `path` and check it against Keras on `X` (default: up to 20,000 of the rows
        fitted on, at least 1,000); a graph that differs is deleted and raises `ModelError`. Trees are merged
        into the same graph, and the check covers the merged graph against Keras and scikit-learn."""
        n_features = int(self.autoencoder_.model.input_shape[-1])
        proto = convert(self._serving(), n_features)
        if isinstance(self.head_, TreeHead):
            proto = merge_trees(proto, self.head_.to_onnx(n_features))
        data = proto.SerializeToString()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows = self._parity_rows if X is None else parity_rows(_rows(X, None)[0], self.config.seed)
        return OnnxExport(path, sha256_bytes(data), check_parity(self.outputs, path, rows))

    def parts(self) -> dict[str, Any]:
        """The card's `parts`: which parts the graph holds, what they learned from and how they combine."""
        rows = self.fitted_on_
        logged = [int(j) for j in np.flatnonzero(self.columns_.log)]
        parts: dict[str, Any] = {"autoencoder": {
            "hidden": list(self.config.hidden), "trained_on": f"{rows['autoencoder_rows']:,} normal rows",
            "score": "mean squared reconstruction error of the scaled features",
            "log_columns": {"columns": logged, "scales": [float(self.columns_.scale[j]) for j in logged],
                            "transform": "sign(x) log(1 + |x| / scale) before scaling, for the columns whose "
                                         "99th percentile of |x| is at least 30 times their median non-zero |x|"}}}
        if self.head_ is None:
            return {**parts, "head_skipped": self.head_problem_, "combination": "score = autoencoder score (no head)"}
        return {**parts, "head": {**self.head_.to_dict(), "learner": self.learner_choice_},
                "combination": self.combination_.describe(), "combination_weights": self.combination_.to_dict()}

    def _fit_supervised(self, x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> None:
        """Fit the supervised learners asked for (`learner`), each cross-fitted on the validation slice with its
        own combination. Of both, the trees are kept only when their combined out-of-fold validation PR-AUC beats
        the logistic head's by more than one standard error of the difference (the one-standard-error rule: a
        lead that the validation slice cannot tell from luck does not buy the larger model)."""
        ae_scores, inputs = self._autoencoder_parts(x)
        seed = self.config.seed
        heads: dict[str, SupervisedHead | TreeHead] = {}
        if self.learner in ("auto", "logistic"):
            heads["logistic"] = SupervisedHead(seed=seed).fit(inputs[train], y[train], inputs[val], y[val])
        if self.learner in ("auto", "trees"):
            heads["trees"] = TreeHead(seed=seed).fit(x[train], y[train], x[val], y[val])
        combinations = {name: Combination().fit(ae_scores[val], head.validation_logits_, y[val])
                        for name, head in heads.items()}
        combined = {name: max(c.validation_pr_auc_.values()) for name, c in combinations.items()}
        lead_record: dict[str, Any] = {}
        if len(heads) == 1:
            chosen, why = next(iter(heads)), f"{self.learner}: the only learner asked for"
        else:
            lead = combined["trees"] - combined["logistic"]
            se = pr_auc_difference_se(y[val], combinations["trees"].validation_scores_,
                                      combinations["logistic"].validation_scores_, seed)
            chosen = "trees" if lead > se else "logistic"
            lead_record["trees_lead"] = {"pr_auc": round(lead, 6), "standard_error": round(se, 6)}
            why = (f"{chosen}: the trees' combined PR-AUC on out-of-fold validation scores "
                   f"({combined['trees']:.4f}) {'beats' if lead > se else 'does not beat'} the logistic head's "
                   f"({combined['logistic']:.4f}) by more than one standard error of the difference ({se:.4f}, "
                   f"a block bootstrap of the validation slice); within it the simpler head is kept")
        self.head_, self.combination_ = heads[chosen], combinations[chosen]
        self.learner_choice_ = {
            "chosen": chosen, "asked": self.learner, **lead_record,
            "validation_pr_auc_combined": {name: round(v, 6) for name, v in combined.items()},
            "validation_pr_auc_alone": {name: round(max(h.validation_pr_auc_.values()), 6)
                                        for name, h in heads.items()},
            "why": why}

    def _head_features(self, x: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """What the supervised part reads: the raw features (trees) or the head inputs (logistic)."""
        return x if isinstance(self.head_, TreeHead) else inputs

    def _train_autoencoder(self, x_train: np.ndarray, x_val: np.ndarray | None,
                           config: AutoencoderConfig) -> TrainedAutoencoder:
        def scale(rows: np.ndarray) -> np.ndarray:
            return self.scaler_(self.columns_(rows)).astype(np.float32)

        return train_autoencoder(scale(x_train), None if x_val is None else scale(x_val), config, self.verbose)

    def _autoencoder_parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The autoencoder's scores and the logistic head's inputs (scaled features, log errors) for `x`."""
        if self._autoencoder_graph is None:
            self._autoencoder_graph = serving_graph(self.columns_, self.scaler_, self.autoencoder_.model)
        scores, errors = predict(self._autoencoder_graph, x)
        return scores, head_inputs(self.scaler_(self.columns_(x)), errors)

    def _serving(self) -> tf.keras.Model:
        if self._graph is None:
            self._graph = serving_graph(self.columns_, self.scaler_, self.autoencoder_.model, self.head_,
                                        self.combination_)
        return self._graph

    def _fitted(self, x: np.ndarray, seen_normal: np.ndarray) -> None:
        """After the parts are fitted: the rows for the parity check, and the scores of the
        normal rows the autoencoder learned from (`seen_normal_scores_`, what `refit` carries the threshold by)."""
        self._parity_rows = parity_rows(x, self.config.seed)
        self.seen_normal_scores_ = self.score_samples(x[seen_normal]).astype(np.float64)
