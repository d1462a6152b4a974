"""Choosing the decision threshold from validation scores, as its own step (numpy only).

The worker flags a row when `score > threshold`; every method here is defined for that strict comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fraudmon.core.errors import TrainingError

METHODS = ("mean_std", "percentile", "alert_rate", "max_f1")
DEFAULT_PARAMETERS = {"mean_std": 3.0, "percentile": 99.0, "alert_rate": 0.01, "max_f1": 1.0}
"""mean_std: k; percentile: q in [0, 100]; alert_rate: target share of normal rows flagged; max_f1: beta."""


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    parameter: float

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise TrainingError(f"no {what} scores to choose a threshold from")
    if not np.isfinite(scores).all():
        raise TrainingError(f"{what} scores contain NaN or infinite values")
    return scores


def mean_std(normal_scores: np.ndarray, k: float = 3.0) -> float:
    """Mean plus `k` (population) standard deviations of the normal scores."""
    scores = _finite(normal_scores, "normal")
    return float(scores.mean() + k * scores.std())


def percentile(normal_scores: np.ndarray, q: float = 99.0) -> float:
    """The `q`-th percentile (linear interpolation) of the normal scores."""
    if not 0 <= q <= 100:
        raise TrainingError(f"percentile must be within [0, 100], got {q}")
    return float(np.percentile(_finite(normal_scores, "normal"), q))


def alert_rate(normal_scores: np.ndarray, rate: float = 0.01) -> float:
    """The lowest observed score such that at most `rate` of the normal rows lie strictly above it."""
    if not 0 <= rate < 1:
        raise TrainingError(f"alert rate must be within [0, 1), got {rate}")
    scores = np.sort(_finite(normal_scores, "normal"))
    allowed = int(np.floor(rate * scores.size + 1e-9))
    return float(scores[scores.size - allowed - 1])


def max_f1(scores: np.ndarray, labels: np.ndarray, beta: float = 1.0) -> float:
    """The observed score that, used as threshold, maximises F-beta on labelled rows (ties: the highest)."""
    scores = _finite(scores, "labelled")
    labels = np.asarray(labels).ravel().astype(bool)
    if labels.shape != scores.shape:
        raise TrainingError("scores and labels differ in length")
    if not labels.any():
        raise TrainingError("max_f1 needs at least one fraud in the labelled rows")
    candidates = np.unique(scores)
    fraud, normal = np.sort(scores[labels]), np.sort(scores[~labels])
    tp = fraud.size - np.searchsorted(fraud, candidates, side="right")
    fp = normal.size - np.searchsorted(normal, candidates, side="right")
    fn = fraud.size - tp
    b2 = beta * beta
    f = (1 + b2) * tp / np.maximum((1 + b2) * tp + b2 * fn + fp, 1)
    best = np.flatnonzero(f == f.max())[-1]
    return float(candidates[best])


def choose_threshold(
    method: str,
    normal_scores: np.ndarray,
    parameter: float | None = None,
    scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Threshold:
    """Dispatch to one method; `scores`/`labels` (all labelled validation rows) are needed for `max_f1`."""
    if method not in METHODS:
        raise TrainingError(f"unknown threshold method {method!r}; choose one of {', '.join(METHODS)}")
    p = DEFAULT_PARAMETERS[method] if parameter is None else float(parameter)
    if method == "mean_std":
        value = mean_std(normal_scores, p)
    elif method == "percentile":
        value = percentile(normal_scores, p)
    elif method == "alert_rate":
        value = alert_rate(normal_scores, p)
    else:
        if scores is None or labels is None:
            raise TrainingError("max_f1 needs labelled validation rows (pass --truth, or use another method)")
        value = max_f1(scores, labels, p)
    return Threshold(value=value, method=method, parameter=p)
