"""Hybrid scoring: a supervised head next to the autoencoder, and their combination into one score (numpy and
scikit-learn only; `training.model.with_head` puts both into the serving graph).

The head is a class-weighted, L2-regularised logistic regression on the scaled features and the autoencoder's
log per-feature errors, fitted on every row of the training part (frauds included). Its regularisation and the
combination's weight are chosen on the validation slice only, by PR-AUC (average precision):

    score = exp(alpha * log(ae + eps) + (1 - alpha) * (mu_a + sd_a * (logit - mu_h) / sd_h))

i.e. a weighted geometric mean of the autoencoder score and the head's logit put on the autoencoder's log scale
(mu the median, sd the interquartile range / 1.349, over the normal validation rows: robust to the long tails
of both). `alpha = 1` is the autoencoder alone, `alpha = 0` the head alone; the score keeps the autoencoder's
units, so thresholds, metrics buckets and the worker work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

MIN_HEAD_FRAUDS = 10
"""Frauds the training part needs before a head is fitted: below that its coefficients are mostly noise."""
HEAD_C_GRID = (0.01, 0.1, 1.0)
"""Inverse L2 strengths tried for the head (validation PR-AUC picks one)."""
ALPHA_GRID = tuple(round(a, 1) for a in np.linspace(0.0, 1.0, 11))
"""Weights of the autoencoder in the combination tried (validation PR-AUC picks one; ties: the larger)."""
SCORE_EPSILON = 1e-6
LOGIT_LIMIT = 30.0
"""The head's logit is clipped to +-30 (probabilities within 1e-13 of 0 or 1 are all certain): an extreme row's
logit in the hundreds would otherwise blow the score up to 1e16 and float32 rounding with it."""
LOG_SCORE_LIMIT = 50.0
"""The combined log score is clipped to +-50 so that exp stays finite in float32."""
LABEL_MODES = ("auto", "off")


def head_inputs(scaled: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """What the head reads: the scaled features and log(1 + per-feature error), side by side."""
    return np.hstack([np.asarray(scaled, np.float64), np.log1p(np.asarray(errors, np.float64))])


def head_problem(labels: np.ndarray | None, split_past: np.ndarray, split_val: np.ndarray, mode: str) -> str | None:
    """Why no head is fitted (None: fit one): labels off or missing, or too few frauds to fit or to choose on."""
    if mode == "off":
        return "--labels off"
    if labels is None:
        return "no labels"
    frauds = int(labels[split_past].sum())
    if frauds < MIN_HEAD_FRAUDS:
        return (f"{frauds} frauds in the training part, fewer than the {MIN_HEAD_FRAUDS} a supervised head needs "
                "(more labelled data, or analysts' verdicts with --verdicts, would add one)")
    if not labels[split_val].any() or labels[split_val].all():
        return "the validation slice needs frauds and normal rows to choose the head's regularisation on"
    return None


def _pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(average_precision_score(labels, scores))


def _robust(values: np.ndarray) -> tuple[float, float]:
    """Median and interquartile range / 1.349 (the standard deviation of a normal distribution), at least 1e-9."""
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q50), max(float(q75 - q25) / 1.349, 1e-9)


@dataclass
class SupervisedHead:
    """Logistic regression (class-weighted, L2) on standardised head inputs; the standardisation is folded into
    `coef_` and `intercept_`, so `score` (the logit) is `inputs @ coef_ + intercept_` on raw head inputs."""

    c_grid: tuple[float, ...] = HEAD_C_GRID
    seed: int = 42

    def fit(self, inputs: np.ndarray, labels: np.ndarray, val_inputs: np.ndarray,
            val_labels: np.ndarray) -> SupervisedHead:
        """Fit one model per C on the training rows; keep the one with the best validation PR-AUC."""
        inputs = np.asarray(inputs, np.float64)
        mean, std = inputs.mean(axis=0), inputs.std(axis=0)
        std = np.where(std < 1e-9, 1.0, std)
        self.validation_pr_auc_: dict[float, float] = {}
        best = None
        for c in self.c_grid:
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=self.seed)
            model.fit((inputs - mean) / std, labels)
            coef, intercept = model.coef_[0] / std, float(model.intercept_[0] - (model.coef_[0] * mean / std).sum())
            auc = _pr_auc(val_labels, np.clip(np.asarray(val_inputs, np.float64) @ coef + intercept, -LOGIT_LIMIT,
                                              LOGIT_LIMIT))
            self.validation_pr_auc_[c] = auc
            if best is None or auc > best[0]:
                best = (auc, c, coef, intercept)
        _, self.c_, self.coef_, self.intercept_ = best
        return self

    def score(self, inputs: np.ndarray) -> np.ndarray:
        """The head's logit per row (clipped to +-`LOGIT_LIMIT`)."""
        return np.clip(np.asarray(inputs, np.float64) @ self.coef_ + self.intercept_, -LOGIT_LIMIT, LOGIT_LIMIT)

    def to_dict(self) -> dict:
        return {"model": "logistic regression, class-weighted (balanced), L2", "inputs": "scaled features and "
                "log(1 + autoencoder per-feature error)", "C": self.c_, "C_tried": list(self.c_grid),
                "validation_pr_auc": {str(c): round(v, 6) for c, v in self.validation_pr_auc_.items()}}


@dataclass
class Combination:
    """The one served score from the autoencoder score and the head's logit (see the module docstring)."""

    alpha_grid: tuple[float, ...] = ALPHA_GRID

    def fit(self, ae_scores: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> Combination:
        """Choose `alpha_` on validation rows by PR-AUC; scales from their normal rows."""
        a, h = np.log(np.asarray(ae_scores, np.float64) + SCORE_EPSILON), np.asarray(logits, np.float64)
        normal = np.asarray(labels) == 0
        (mu_a, sd_a), (mu_h, sd_h) = _robust(a[normal]), _robust(h[normal])
        self.validation_pr_auc_: dict[float, float] = {}
        for alpha in self.alpha_grid:
            self.validation_pr_auc_[alpha] = _pr_auc(labels, alpha * a + (1 - alpha) * (h - mu_h) / sd_h * sd_a)
        best = max(self.validation_pr_auc_.values())
        self.alpha_ = max(alpha for alpha, auc in self.validation_pr_auc_.items() if auc == best)
        self.beta_ = (1 - self.alpha_) * sd_a / sd_h
        self.gamma_ = (1 - self.alpha_) * (mu_a - sd_a * mu_h / sd_h)
        return self

    def score(self, ae_scores: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The combined score, as the graph computes it."""
        log_score = self.alpha_ * np.log(np.asarray(ae_scores, np.float64) + SCORE_EPSILON) + \
            self.beta_ * np.asarray(logits, np.float64) + self.gamma_
        return np.exp(np.clip(log_score, -LOG_SCORE_LIMIT, LOG_SCORE_LIMIT))

    def describe(self) -> str:
        return (f"score = exp({self.alpha_:g} * log(autoencoder + {SCORE_EPSILON:g}) + {self.beta_:.6g} * head_logit "
                f"+ {self.gamma_:.6g}) (alpha {self.alpha_:g} chosen on validation PR-AUC)")

    def to_dict(self) -> dict:
        return {"alpha": self.alpha_, "beta": self.beta_, "gamma": self.gamma_, "alpha_tried": list(self.alpha_grid),
                "validation_pr_auc": {str(a): round(v, 6) for a, v in self.validation_pr_auc_.items()}}
