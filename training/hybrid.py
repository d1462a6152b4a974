"""Hybrid scoring: a supervised head next to the autoencoder, and their combination into one score (numpy and
scikit-learn only; `training.model.with_head` puts both into the serving graph).

The head is a class-weighted, L2-regularised logistic regression on the scaled features and the autoencoder's
log per-feature errors, fitted on every labelled row before the held-out part: the training part (frauds
included) and the validation slice. Labels are scarce and, split by time, often bunched in one period (3 of
creditcard_head.csv's 38 frauds fall in its training part), so the validation slice is cross-fitted: it is cut
into blocks of consecutive rows (`validation_folds`), and each block is scored by a head fitted without it. The
head's regularisation and the combination's weight are chosen on those out-of-fold validation scores only, by
PR-AUC (average precision); the head is then refitted on all of those rows:

    score = exp(limit(s)),  s = alpha * log(ae + eps) + (1 - alpha) * (mu_a + sd_a * (logit - mu_h) / sd_h)

i.e. a weighted geometric mean of the autoencoder score and the head's logit put on the autoencoder's log scale
(mu the median, sd the interquartile range / 1.349, over the normal validation rows: robust to the long tails
of both). `alpha = 1` is the autoencoder alone, `alpha = 0` the head alone; the score keeps the autoencoder's
units, so thresholds, metrics buckets and the worker work unchanged. `limit` is the identity within +-40 and
bends smoothly towards +-50 beyond (`soft_limit`): exp stays finite in float32 and the scores keep their order. A
hard clip there made the most anomalous rows tie (on the card-holder data 39 rows, frauds and normal, shared
the clipped maximum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import KFold, StratifiedKFold

MIN_HEAD_FRAUDS = 10
"""Frauds the training part and the validation slice need together before a head is fitted: below that its
coefficients are mostly noise."""
MIN_VALIDATION_FRAUDS = 5
"""Frauds the validation slice needs for its out-of-fold scores to choose anything."""
CROSS_FIT_FOLDS = 5
HEAD_C_GRID = (0.001, 0.01, 0.1, 1.0)
"""Inverse L2 strengths tried for the head (out-of-fold validation PR-AUC picks one)."""
ALPHA_GRID = tuple(round(a, 1) for a in np.linspace(0.0, 1.0, 11))
"""Weights of the autoencoder in the combination tried (validation PR-AUC picks one; ties: the larger)."""
SCORE_EPSILON = 1e-6
LOGIT_LIMIT = 1e4
"""The head's logit is clipped to +-1e4, only so that an infinite input cannot meet an infinite autoencoder score
of the other sign (inf - inf); the soft limit below orders every finite score below it."""
LOG_SCORE_KNEE = 40.0
LOG_SCORE_LIMIT = 50.0
"""The combined log score is kept within +-50 (`soft_limit`) so that exp stays finite in float32."""
LABEL_MODES = ("auto", "off")
BOOTSTRAP_BLOCKS, BOOTSTRAP_DRAWS = 50, 200
"""The block bootstrap that weighs one learner's lead over another on validation (`pr_auc_difference_se`)."""


def soft_limit(s: Any, xp: Any = np) -> Any:
    """The identity within +-`LOG_SCORE_KNEE`, then bent smoothly (tanh) towards +-`LOG_SCORE_LIMIT`: continuous
    with its slope, and strictly increasing until tanh rounds to 1 (|s| ~130 in float32). `xp` is numpy, or
    TensorFlow in the serving graph."""
    room, knee = LOG_SCORE_LIMIT - LOG_SCORE_KNEE, LOG_SCORE_KNEE
    return xp.where(xp.abs(s) <= knee, s, xp.sign(s) * (knee + room * xp.tanh((xp.abs(s) - knee) / room)))


def head_inputs(scaled: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """What the head reads: the scaled features and log(1 + per-feature error), side by side."""
    return np.hstack([np.asarray(scaled, np.float64), np.log1p(np.asarray(errors, np.float64))])


def head_problem(labels: np.ndarray | None, split_past: np.ndarray, split_val: np.ndarray, mode: str) -> str | None:
    """Why no head is fitted (None: fit one): labels off or missing, or too few frauds to fit or to choose on."""
    if mode == "off":
        return "--labels off"
    if labels is None:
        return "no labels"
    more = "(more labelled data, or analysts' verdicts with --verdicts, would add one)"
    frauds, val_frauds = int(labels[split_past].sum() + labels[split_val].sum()), int(labels[split_val].sum())
    if frauds < MIN_HEAD_FRAUDS:
        return (f"{frauds} frauds in the training and validation parts, fewer than the {MIN_HEAD_FRAUDS} a "
                f"supervised head needs {more}")
    if val_frauds < MIN_VALIDATION_FRAUDS or val_frauds > split_val.size - CROSS_FIT_FOLDS:
        return (f"{val_frauds} frauds among the {split_val.size} validation rows: choosing the head's "
                f"regularisation needs at least {MIN_VALIDATION_FRAUDS} frauds and {CROSS_FIT_FOLDS} normal rows "
                f"there {more}")
    return None


def validation_folds(labels: np.ndarray, folds: int, seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The cross-fitting folds of the validation slice (its rows in time order) and how they were cut: `folds`
    blocks of consecutive rows, so that a fold's model is scored on rows apart in time from those it learns from,
    as the held-out part is. Frauds come in bursts (one card tested many times in a minute, an account emptied in
    a few transfers): shuffled folds put one burst on both sides, and a learner that memorises a burst's details
    (trees do) looks far better on validation than on later traffic. When the slice's frauds all fall in one
    block, so that a block's model would learn from none of them, the folds are stratified and shuffled."""
    labels = np.asarray(labels)
    blocks = list(KFold(folds).split(labels))
    if all(labels[kept].any() for kept, _ in blocks):
        return blocks, f"{folds} blocks of consecutive validation rows"
    shuffled = StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, labels)
    return list(shuffled), (f"{folds} stratified shuffled folds: the validation frauds all fall in one block of "
                            "consecutive rows")


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(average_precision_score(labels, scores))


def pr_auc_difference_se(labels: np.ndarray, first: np.ndarray, second: np.ndarray, seed: int,
                         blocks: int = BOOTSTRAP_BLOCKS, draws: int = BOOTSTRAP_DRAWS) -> float:
    """The standard error of `pr_auc(first) - pr_auc(second)` on the same rows (in time order), by a block
    bootstrap: the rows are cut into `blocks` runs of consecutive rows, drawn with replacement, so that a burst
    of frauds is drawn whole (a row bootstrap would count its members as independent evidence). Infinite when
    fewer than two draws hold both classes."""
    labels, first, second = np.asarray(labels), np.asarray(first), np.asarray(second)
    runs = [run for run in np.array_split(np.arange(len(labels)), min(blocks, len(labels))) if run.size]
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(draws):
        rows = np.concatenate([runs[i] for i in rng.integers(0, len(runs), len(runs))])
        if labels[rows].any() and not labels[rows].all():
            differences.append(pr_auc(labels[rows], first[rows]) - pr_auc(labels[rows], second[rows]))
    return float(np.std(differences, ddof=1)) if len(differences) > 1 else math.inf


def _robust(values: np.ndarray) -> tuple[float, float]:
    """Median and interquartile range / 1.349 (the standard deviation of a normal distribution), at least 1e-9.
    When most rows share one value (trees give many normal rows the same logit) the interquartile range
    collapses, and a spread under a tenth of the standard deviation of the values clipped to their 1st-99th
    percentiles is replaced by that standard deviation."""
    q1, q25, q50, q75, q99 = np.percentile(values, [1, 25, 50, 75, 99])
    spread, clipped = float(q75 - q25) / 1.349, float(np.std(np.clip(values, q1, q99)))
    return float(q50), max(clipped if spread < 0.1 * clipped else spread, 1e-9)


def _logistic(c: float, inputs: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Coefficients and intercept on raw inputs of a class-weighted L2 logistic regression fitted on standardised
    inputs (the standardisation folded in)."""
    mean, std = inputs.mean(axis=0), inputs.std(axis=0)
    std = np.where(std < 1e-9, 1.0, std)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    model.fit((inputs - mean) / std, labels)
    coef = model.coef_[0] / std
    return coef, float(model.intercept_[0] - (model.coef_[0] * mean / std).sum())


def _logits(inputs: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    return np.clip(np.asarray(inputs, np.float64) @ coef + intercept, -LOGIT_LIMIT, LOGIT_LIMIT)


@dataclass
class SupervisedHead:
    """Logistic regression (class-weighted, L2) on standardised head inputs; the standardisation is folded into
    `coef_` and `intercept_`, so `score` (the logit) is `inputs @ coef_ + intercept_` on raw head inputs."""

    c_grid: tuple[float, ...] = HEAD_C_GRID
    folds: int = CROSS_FIT_FOLDS
    seed: int = 42

    def fit(self, inputs: np.ndarray, labels: np.ndarray, val_inputs: np.ndarray,
            val_labels: np.ndarray) -> SupervisedHead:
        """Cross-fit the validation rows (`validation_folds`) for every C (`validation_logits_`: the chosen C's
        out-of-fold logits), keep the C with the best out-of-fold PR-AUC, and refit it on the training and
        validation rows."""
        inputs, val_inputs = np.asarray(inputs, np.float64), np.asarray(val_inputs, np.float64)
        labels, val_labels = np.asarray(labels), np.asarray(val_labels)
        folds, self.folds_ = validation_folds(val_labels, self.folds, self.seed)
        self.validation_pr_auc_: dict[float, float] = {}
        out_of_fold: dict[float, np.ndarray] = {}
        for c in self.c_grid:
            logits = np.empty(len(val_labels))
            for kept, held in folds:
                coef, intercept = _logistic(c, np.vstack([inputs, val_inputs[kept]]),
                                            np.concatenate([labels, val_labels[kept]]), self.seed)
                logits[held] = _logits(val_inputs[held], coef, intercept)
            out_of_fold[c], self.validation_pr_auc_[c] = logits, pr_auc(val_labels, logits)
        best = max(self.validation_pr_auc_.values())
        self.c_ = min(c for c, auc in self.validation_pr_auc_.items() if auc == best)  # ties: the stronger L2
        self.validation_logits_ = out_of_fold[self.c_]
        self.coef_, self.intercept_ = _logistic(self.c_, np.vstack([inputs, val_inputs]),
                                                np.concatenate([labels, val_labels]), self.seed)
        self.fitted_on_ = {"rows": int(len(labels) + len(val_labels)), "frauds": int(labels.sum() + val_labels.sum())}
        return self

    def refit(self, inputs: np.ndarray, labels: np.ndarray) -> SupervisedHead:
        """A head with this one's C (and the record of how it was chosen) fitted on `inputs`, with no choice made."""
        head = SupervisedHead(self.c_grid, self.folds, self.seed)
        head.c_, head.validation_pr_auc_, head.folds_ = self.c_, self.validation_pr_auc_, self.folds_
        head.coef_, head.intercept_ = _logistic(self.c_, np.asarray(inputs, np.float64), np.asarray(labels), self.seed)
        head.fitted_on_ = {"rows": int(len(labels)), "frauds": int(np.sum(labels))}
        return head

    def score(self, inputs: np.ndarray) -> np.ndarray:
        """The head's logit per row (clipped to +-`LOGIT_LIMIT`)."""
        return _logits(inputs, self.coef_, self.intercept_)

    def to_dict(self) -> dict:
        return {"model": "logistic regression, class-weighted (balanced), L2", "inputs": "scaled features and "
                "log(1 + autoencoder per-feature error)", "C": self.c_, "C_tried": list(self.c_grid),
                "fitted_on": {**self.fitted_on_, "parts": "training part and validation slice"},
                "chosen_on": f"out-of-fold scores of the validation slice ({self.folds_})",
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
        blended = {alpha: alpha * a + (1 - alpha) * (h - mu_h) / sd_h * sd_a for alpha in self.alpha_grid}
        self.validation_pr_auc_ = {alpha: pr_auc(labels, scores) for alpha, scores in blended.items()}
        best = max(self.validation_pr_auc_.values())
        self._set(max(alpha for alpha, auc in self.validation_pr_auc_.items() if auc == best), mu_a, sd_a, mu_h, sd_h)
        self.validation_scores_ = blended[self.alpha_]  # the chosen weight's (what compares the learners)
        return self

    def refit(self, ae_scores: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> Combination:
        """A combination with this one's alpha (and the record of how it was chosen), its scales from the normal
        rows given."""
        a, h = np.log(np.asarray(ae_scores, np.float64) + SCORE_EPSILON), np.asarray(logits, np.float64)
        normal = np.asarray(labels) == 0
        combination = Combination(self.alpha_grid)
        combination.validation_pr_auc_ = self.validation_pr_auc_
        combination._set(self.alpha_, *_robust(a[normal]), *_robust(h[normal]))
        return combination

    def _set(self, alpha: float, mu_a: float, sd_a: float, mu_h: float, sd_h: float) -> None:
        self.alpha_, self.mu_a_, self.mu_h_ = alpha, mu_a, mu_h
        self.beta_ = (1 - alpha) * sd_a / sd_h
        self.gamma_ = (1 - alpha) * (mu_a - sd_a * mu_h / sd_h)

    def score(self, ae_scores: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The combined score, as the graph computes it."""
        log_score = self.alpha_ * np.log(np.asarray(ae_scores, np.float64) + SCORE_EPSILON) + \
            self.beta_ * np.asarray(logits, np.float64) + self.gamma_
        return np.exp(soft_limit(log_score))

    def contributions(self, ae_scores: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """`[n, 2]`: how far each part moves the log score above a typical normal row's (the median), the
        autoencoder's `alpha (log(ae + eps) - mu_a)` and the supervised part's `beta (logit - mu_h)`; they sum to
        `s - mu_a`, and the larger one drove the score."""
        a = self.alpha_ * (np.log(np.asarray(ae_scores, np.float64) + SCORE_EPSILON) - self.mu_a_)
        h = self.beta_ * (np.asarray(logits, np.float64) - self.mu_h_)
        return np.stack([a, h], axis=1)

    def describe(self) -> str:
        return (f"score = exp(s), s = {self.alpha_:g} * "
                f"log(autoencoder + {SCORE_EPSILON:g}) + {self.beta_:.6g} * head_logit + {self.gamma_:.6g} (alpha "
                f"{self.alpha_:g} chosen on validation PR-AUC; s bent smoothly into +-{LOG_SCORE_LIMIT:g} beyond "
                f"+-{LOG_SCORE_KNEE:g})")

    def to_dict(self) -> dict:
        return {"alpha": self.alpha_, "beta": self.beta_, "gamma": self.gamma_, "mu_autoencoder": self.mu_a_,
                "mu_head": self.mu_h_, "alpha_tried": list(self.alpha_grid),
                "validation_pr_auc": {str(a): round(v, 6) for a, v in self.validation_pr_auc_.items()}}
