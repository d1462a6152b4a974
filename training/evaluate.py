"""Held-out evaluation: ranking metrics, recall at fixed alert rates, the confusion matrix at a threshold, a
threshold table, per-scenario recall, the served model's parts alone (autoencoder, supervised head) and three
baselines fitted on the same training rows. numpy only (no TensorFlow); the baselines need scikit-learn, and
without it `evaluate_file` leaves them out and says so."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudmon.core import rates
from fraudmon.core.eventfiles import Format, TableSpec
from training import threshold as thr
from training.data import StandardScaler

STD_MULTIPLES = (1.0, 2.0, 3.0)
ALERT_RATES = (0.001, 0.005, 0.01, 0.02)
RECALL_RATES = (0.001, 0.005, 0.01)
"""Alert rates at which each model's held-out recall is reported (its top 0.1%, 0.5%, 1% of rows flagged)."""
BASELINES = ("isolation_forest", "pca", "kmeans")
KMEANS_CLUSTERS = 8
NO_BASELINES = "left out: IsolationForest, PCA and k-means need scikit-learn: pip install 'fraud-monitor[train]'"


def binary_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positives when flagging `score >= t`, for each distinct score t from the highest down,
    and those t (the points scikit-learn's ROC and precision-recall curves are made of)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    ordered, fraud = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]
    tps = np.cumsum(fraud)[last]
    return last + 1 - tps, tps, ordered[last]


def ranking(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """ROC-AUC and PR-AUC (average precision, as scikit-learn defines it); None when only one class is present."""
    labels = np.asarray(labels).astype(int)
    if labels.min(initial=0) == labels.max(initial=0):
        return {"roc_auc": None, "pr_auc": None}
    fps, tps, _ = binary_curve(labels, scores)
    roc_auc = np.trapezoid(np.r_[0, tps / tps[-1]], np.r_[0, fps / fps[-1]])
    pr_auc = np.sum(np.diff(np.r_[0, tps / tps[-1]]) * tps / (tps + fps))
    return {"roc_auc": float(roc_auc), "pr_auc": float(pr_auc)}


def have_sklearn() -> bool:
    """Whether scikit-learn (the `train` extra) can be imported."""
    try:
        import sklearn  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def recall_at_rates(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Recall when the top `rate` share of the rows by score is flagged, for each of `RECALL_RATES`."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    out: dict[str, float | None] = {}
    for rate in RECALL_RATES:
        flagged = order[: int(np.ceil(rate * len(order)))]
        out[f"{rate:.1%}"] = float(labels[flagged].sum() / labels.sum()) if labels.any() else None
    return out


def recall_at_false_flag_rates(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Recall at the threshold that flags at most `rate` of the normal rows (a point of the ROC curve), for each
    of `RECALL_RATES`."""
    scores, fraud = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if not fraud.any() or fraud.all():
        return {f"{rate:.1%}": None for rate in RECALL_RATES}
    return {f"{rate:.1%}": float((scores[fraud] > thr.alert_rate(scores[~fraud], rate)).mean())
            for rate in RECALL_RATES}


def at_threshold(scores: np.ndarray, labels: np.ndarray | None, threshold: float) -> dict[str, float | int | None]:
    """Alert rate, and with labels the confusion matrix, precision, recall and F1 for `score > threshold`."""
    flagged = np.asarray(scores) > threshold
    out: dict[str, float | int | None] = {"threshold": float(threshold), "alerts": int(flagged.sum()),
                                          "alert_rate": float(flagged.mean()) if flagged.size else 0.0}
    if labels is None:
        return out
    fraud = np.asarray(labels).astype(bool)
    tp, fp = int((flagged & fraud).sum()), int((flagged & ~fraud).sum())
    fn, tn = int((~flagged & fraud).sum()), int((~flagged & ~fraud).sum())
    precision = rates.precision(tp, tp + fp)
    recall = rates.recall(tp, tp + fn)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    out.update(tp=tp, fp=fp, tn=tn, fn=fn, precision=precision, recall=recall, f1=f1,
               normal_alert_rate=fp / (fp + tn) if fp + tn else None)
    return out


def reference_thresholds(val_normal_scores: np.ndarray) -> list[dict[str, float | str]]:
    """The table's thresholds, from normal validation scores: mean + 1/2/3 std and several alert rates."""
    rows: list[dict[str, float | str]] = [
        {"rule": f"mean+{k:g}std", "threshold": thr.mean_std(val_normal_scores, k)} for k in STD_MULTIPLES
    ]
    rows += [{"rule": f"alert_rate {r:.1%}", "threshold": thr.alert_rate(val_normal_scores, r)} for r in ALERT_RATES]
    return rows


def threshold_table(
    references: Sequence[dict], scores: np.ndarray, labels: np.ndarray | None
) -> list[dict[str, float | int | str | None]]:
    """Each reference threshold applied to the evaluated rows."""
    return [{"rule": ref["rule"], **at_threshold(scores, labels, float(ref["threshold"]))} for ref in references]


def per_scenario(
    scores: np.ndarray, labels: np.ndarray, scenarios: Sequence[str], threshold: float
) -> dict[str, dict[str, float | int]]:
    """Recall at `threshold` for each fraud scenario present in the evaluated rows."""
    flagged = np.asarray(scores) > threshold
    names = np.asarray(scenarios, dtype=object)
    out: dict[str, dict[str, float | int]] = {}
    for name in sorted({s for s, y in zip(scenarios, labels, strict=True) if y and s}):
        rows = (names == name) & np.asarray(labels).astype(bool)
        detected = int(flagged[rows].sum())
        out[name] = {"frauds": int(rows.sum()), "detected": detected, "recall": detected / int(rows.sum())}
    return out


def fit_baselines(x_train: np.ndarray, seed: int, n_components: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """IsolationForest (raw features), PCA reconstruction error and the distance to the nearest k-means centroid
    (both on scaled features), all fitted on `x_train`."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest

    x_train = np.asarray(x_train, dtype=np.float64)
    forest = IsolationForest(n_estimators=200, random_state=seed, n_jobs=1).fit(x_train)
    scale = StandardScaler.fit(x_train)
    pca = PCA(n_components=min(n_components, x_train.shape[1]), random_state=seed).fit(scale(x_train))
    kmeans = KMeans(n_clusters=min(KMEANS_CLUSTERS, len(x_train)), n_init=3, random_state=seed).fit(scale(x_train))

    def pca_error(x: np.ndarray) -> np.ndarray:
        z = scale(np.asarray(x, dtype=np.float64))
        return np.mean((z - pca.inverse_transform(pca.transform(z))) ** 2, axis=1)

    return {"isolation_forest": lambda x: -forest.score_samples(np.asarray(x, dtype=np.float64)),
            "pca": pca_error,
            "kmeans": lambda x: kmeans.transform(scale(np.asarray(x, dtype=np.float64))).min(axis=1)}


def summarize(
    scores: np.ndarray, labels: np.ndarray | None, threshold: float, scenarios: Sequence[str] | None = None
) -> dict:
    """Ranking metrics, the result at `threshold`, and per-scenario recall when scenarios are known."""
    out: dict = {"rows": int(len(scores))}
    if labels is not None:
        out["frauds"] = int(np.asarray(labels).sum())
        out.update(ranking(scores, labels))
        out["recall_at_alert_rate"] = recall_at_rates(scores, labels)
        out["recall_at_false_flag_rate"] = recall_at_false_flag_rates(scores, labels)
    out["at_threshold"] = at_threshold(scores, labels, threshold)
    if labels is not None and scenarios is not None:
        out["per_scenario"] = per_scenario(scores, labels, scenarios, threshold)
    return out


def baseline_scores(
    x: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray, seed: int, n_components: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each baseline fitted on the training rows: (validation scores, test scores)."""
    fitted = fit_baselines(x[train], seed, n_components)
    return {name: (score(x[val]), score(x[test])) for name, score in fitted.items()}


def evaluate(
    test_scores: np.ndarray,
    test_labels: np.ndarray | None,
    threshold: thr.Threshold,
    references: Sequence[dict],
    test_scenarios: Sequence[str] | None = None,
    baselines: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    val_labels: np.ndarray | None = None,
    parts: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict:
    """The metrics document: the model at its threshold, the threshold table, and its parts alone and the
    baselines, each at a threshold chosen the same way on its own validation scores."""
    metrics: dict = {
        "threshold": threshold.to_dict(),
        "model": summarize(test_scores, test_labels, threshold.value, test_scenarios),
        "table": threshold_table(references, test_scores, test_labels),
    }
    for key, others in (("parts", parts), ("baselines", baselines)):
        if not others:
            continue
        metrics[key] = {}
        for name, (val, test) in others.items():
            normal = val if val_labels is None else val[np.asarray(val_labels) == 0]
            chosen = thr.choose_threshold(threshold.method, normal, threshold.parameter, val, val_labels)
            metrics[key][name] = summarize(test, test_labels, chosen.value,
                                           test_scenarios if key == "parts" else None)
    return metrics


@dataclass
class Assessment:
    """The metrics document and the evaluated rows' scores per model (for the plots)."""

    metrics: dict
    scores: dict[str, np.ndarray]
    labels: np.ndarray | None


def assess(
    x: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None,
    scenarios: Sequence[str] | None,
    rows: np.ndarray,
    threshold: thr.Threshold,
    references: Sequence[dict],
    baseline_rows: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 42,
    n_components: int = 8,
    parts: dict[str, np.ndarray] | None = None,
    baselines: bool = True,
) -> Assessment:
    """Evaluate the model's `scores` (all rows) on `rows`; with `baseline_rows` = (train, val) indices also fit
    the baselines on the training rows (unless `baselines` is False), compare the model's `parts` (their scores
    on all rows), and report validation ranking metrics (the ones tuning may look at)."""
    test_labels = None if labels is None else labels[rows]
    test_scenarios = None if scenarios is None else [scenarios[i] for i in rows]
    fitted = val_labels = split_parts = None
    if baseline_rows is not None:
        train, val = baseline_rows
        fitted = baseline_scores(x, train, val, rows, seed, n_components) if baselines else {}
        split_parts = {name: (values[val], values[rows]) for name, values in (parts or {}).items()}
        val_labels = None if labels is None else labels[val]
    metrics = evaluate(scores[rows], test_labels, threshold, references, test_scenarios, fitted, val_labels,
                       split_parts)
    others = {**(split_parts or {}), **(fitted or {})}
    if baseline_rows is not None and val_labels is not None:
        metrics["validation"] = {"model": ranking(scores[baseline_rows[1]], val_labels),
                                 **{name: ranking(v, val_labels) for name, (v, _) in others.items()}}
    curves = {"model": scores[rows], **{name: t for name, (_, t) in others.items()}}
    return Assessment(metrics, curves, test_labels)


FIT_SAMPLE = 5_000  # events the fit check reads


def evaluate_file(
    model_path: Path, data: Path, truth: Path | None = None, fmt: Format = "auto", part: str = "auto",
    table: TableSpec | None = None,
) -> tuple[dict, Assessment]:
    """Re-run the evaluation of a published model with onnxruntime only: (report document, assessment). A model
    that does not fit the data (`stream_app.fit`: its first `FIT_SAMPLE` events, or its normal rows' scores) is
    named in `about["does not fit"]`: its figures then mean nothing.

    `part`: `holdout` repeats the training split (test rows, baselines refitted on the training rows), `all`
    scores every row; `auto` picks `holdout` when `data` is the file the card was trained on. A model with a
    supervised head is also compared with its autoencoder alone (the mean of its `feature_errors`). A served
    model refitted on every row of `data` (the card's `training.served`) has seen the held-out part: `about`
    says so.
    """
    from stream_app.features import vectorize
    from stream_app.fit import events_problem, scores_problem
    from stream_app.scoring import load_model
    from training.data import load_dataset, split_dataset

    model = load_model(model_path)
    card, training = model.card, model.card.get("training", {})
    dataset = load_dataset(data, truth, fmt, table=table)
    if part == "auto":
        part = "holdout" if dataset.source["sha256"] == training.get("data", {}).get("sha256") else "all"
    if part not in ("holdout", "all"):
        raise ValueError(f"unknown part {part!r}: use auto, holdout or all")
    x = vectorize(dataset.events, model.feature_names)
    scores, errors = model.score(x)
    normal_scores = scores if dataset.labels is None else scores[np.asarray(dataset.labels) == 0]
    misfits = [problem for problem in (events_problem(model, dataset.events[:FIT_SAMPLE]),
                                       scores_problem(model, normal_scores)) if problem]
    threshold = thr.Threshold(**card.threshold.model_dump())
    references = card.get("metrics", {}).get("table") or reference_thresholds(scores)
    parts = {"autoencoder": errors.mean(axis=1)} if card.parts is not None and card.parts.head else None
    if part == "holdout":
        split_info = training["split"]
        seed = training.get("seed", 42)
        split = split_dataset(dataset, split_info["test_fraction"], split_info["val_fraction"], min_normal_train=1,
                              normal_only=training.get("normal_only"), seed=seed)
        pca = training.get("baselines", {}).get("pca", {})
        assessment = assess(x, scores, dataset.labels, dataset.scenarios, split.test, threshold, references,
                            (split.train, split.val), seed, pca.get("n_components", 8), parts, have_sklearn())
    else:
        assessment = assess(x, scores, dataset.labels, dataset.scenarios, np.arange(len(dataset)), threshold,
                            references)
    about = {"model": str(model_path), "data": f"{data} ({dataset.source['format']}, {len(dataset)} rows)",
             "evaluated part": part, "scored with": "onnxruntime"}
    if part == "holdout" and not have_sklearn():
        about["baselines"] = NO_BASELINES
    served = training.get("served")
    if served and dataset.source["sha256"] == training.get("data", {}).get("sha256"):
        about["in-sample"] = (f"the served model learned from every row of this file ({served['learned_from']}), "
                              "so these figures flatter it; the card's metrics are the held-out figures")
    if misfits:
        about["does not fit"] = "; ".join(misfits)
    return {"title": f"{model.name} {model.version} on {Path(data).name}", "about": about,
            "metrics": assessment.metrics}, assessment
