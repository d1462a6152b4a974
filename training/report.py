"""The evaluation report: `metrics.json`, PNG plots (matplotlib Agg) and a short `report.md` linking them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.evaluate import binary_curve  # noqa: E402

LABELS = {"autoencoder": "autoencoder alone", "head": "head alone", "isolation_forest": "IsolationForest",
          "pca": "PCA reconstruction", "kmeans": "k-means distance",
          "gradient_boosting": "default gradient boosting (reference)"}
FEW_FRAUDS = 30
"""Below this many frauds in the evaluated rows, each fraud detected or missed moves recall by over 3 points."""


def few_frauds_caveat(frauds: int, where: str) -> str | None:
    """A caveat when `where` (e.g. "the 1,200 held-out rows") holds too few frauds for stable metrics, else None."""
    if frauds == 0:
        return f"no frauds in {where}: precision, recall and PR-AUC cannot be measured on them"
    if frauds < FEW_FRAUDS:
        return (f"only {frauds} frauds in {where} (fewer than {FEW_FRAUDS}): precision, recall, F1 and PR-AUC on "
                f"them are noisy, one fraud more or less detected moves recall by {1 / frauds:.0%}")
    return None


def served_label(metrics: dict) -> str:
    """What the served score is: the combination of autoencoder and head, or the autoencoder alone."""
    return "combined (served)" if (metrics.get("parts") or {}).get("head") else "autoencoder (served)"


def model_rows(metrics: dict) -> list[tuple[str, str, dict]]:
    """(key, label, summary) of the served model, its parts alone, the supervised reference and the baselines, in
    the reports' order."""
    rows = [("model", served_label(metrics), metrics["model"])]
    for key in ("parts", "reference", "baselines"):
        rows += [(name, LABELS.get(name, name), summary) for name, summary in (metrics.get(key) or {}).items()]
    return rows


def reference_gap(metrics: dict) -> list[str]:
    """A paragraph on how far the served model is from the supervised reference (none without one)."""
    reference = (metrics.get("reference") or {}).get("gradient_boosting")
    if not reference or reference.get("pr_auc") is None:
        return []
    model = metrics["model"]
    gaps = ", ".join(f"{name} {model[key] - reference[key]:+.4f}" for key, name in
                     (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")) if model.get(key) is not None)
    ours = model["recall_at_false_flag_rate"].get("0.5%")
    theirs = reference["recall_at_false_flag_rate"].get("0.5%")
    recall = "" if ours is None or theirs is None else f", recall at 0.5% false flags {ours - theirs:+.4f}"
    return [f"Supervised reference: scikit-learn's HistGradientBoostingClassifier with its defaults, fitted on the "
            f"labelled rows the model learned from (frauds included) and flagging at probability 0.5. The served "
            f"model minus the reference: {gaps}{recall}.", ""]


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.3%}"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def plot_loss(history: dict[str, list[float]], best_epoch: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for key, label in (("loss", "training (normal rows)"), ("val_loss", "validation (normal rows)")):
        if history.get(key):
            ax.plot(epochs, history[key], label=label)
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch {best_epoch}")
    ax.set(xlabel="epoch", ylabel="reconstruction loss (scaled space, log)", title="Loss curves", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histogram(scores: np.ndarray, labels: np.ndarray | None, threshold: float, path: Path) -> None:
    """Score histograms, normal vs fraud, on log-spaced bins, with the threshold line."""
    positive = np.asarray(scores, dtype=np.float64)
    floor = max(float(positive[positive > 0].min()) if (positive > 0).any() else 1e-6, 1e-9)
    clipped = np.maximum(positive, floor)
    bins = np.geomspace(floor, max(float(clipped.max()), floor * 10, threshold * 1.1), 60)
    fig, ax = plt.subplots(figsize=(7, 4))
    if labels is None:
        ax.hist(clipped, bins=bins, alpha=0.7, label="all rows")
    else:
        fraud = np.asarray(labels).astype(bool)
        for rows, name in ((~fraud, "normal"), (fraud, "fraud")):  # each class sums to 1: shapes comparable
            ax.hist(clipped[rows], bins=bins, alpha=0.6, weights=np.full(rows.sum(), 1 / max(rows.sum(), 1)),
                    label=f"{name} ({rows.sum()})")
    ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xscale("log")
    ax.set(xlabel="anomaly score (log)", ylabel="share of the class's rows", title="Scores: normal vs fraud")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(
    scores: dict[str, np.ndarray], labels: np.ndarray, metrics: dict, roc_path: Path, pr_path: Path
) -> None:
    """ROC and precision-recall curves for the model and the baselines."""
    fig_roc, ax_roc = plt.subplots(figsize=(5.5, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(5.5, 5))
    for key, label, summary in model_rows(metrics):
        fps, tps, _ = binary_curve(labels, scores[key])
        ax_roc.plot(np.r_[0, fps / fps[-1]], np.r_[0, tps / tps[-1]], label=f"{label} (AUC {summary['roc_auc']:.3f})")
        ax_pr.step(np.r_[0, tps / tps[-1]], np.r_[1, tps / (tps + fps)], where="pre",
                   label=f"{label} (AP {summary['pr_auc']:.3f})")
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (held-out)")
    ax_pr.axhline(labels.mean(), color="grey", linestyle=":", label=f"fraud rate {labels.mean():.3%}")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (held-out)", ylim=(0, 1.02))
    for fig, ax, path in ((fig_roc, ax_roc, roc_path), (fig_pr, ax_pr, pr_path)):
        ax.legend(loc="lower right" if ax is ax_roc else "upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def render_markdown(document: dict, images: dict[str, str]) -> str:
    """`report.md` from the metrics document (every number in it comes from `metrics.json`)."""
    m = document["metrics"]
    model, at = m["model"], m["model"]["at_threshold"]
    t = m["threshold"]
    lines = [f"# Evaluation: {document.get('title', 'model')}", ""]
    for key, value in document.get("about", {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", f"Threshold: **{t['value']:.6g}** ({t['method']}, parameter {t['parameter']:g}); flag when "
              "score > threshold.", ""]
    has_labels = "pr_auc" in model
    if not has_labels:
        lines += ["> **No labels:** every row was treated as normal; only alert counts can be reported, no "
                  "precision or recall.", ""]
    if has_labels:
        caveat = few_frauds_caveat(model["frauds"], f"the {model['rows']:,} evaluated rows")
        lines += [f"> **Caveat:** {caveat[0].upper()}{caveat[1:]}.", ""] if caveat else []
        rates = list(model["recall_at_alert_rate"])
        lines += ["## Held-out part, side by side", "",
                  f"| model | ROC-AUC | PR-AUC | {' | '.join(f'recall at {r}' for r in rates)} | "
                  f"{' | '.join(f'recall at {r} false flags' for r in rates)} | precision | recall | "
                  "false-flag rate | alerts |", "|---" * (7 + 2 * len(rates)) + "|"]
        for _, label, summary in model_rows(m):
            a = summary["at_threshold"]
            at_rates = " | ".join(_fmt(v) for v in [*summary["recall_at_alert_rate"].values(),
                                                   *summary["recall_at_false_flag_rate"].values()])
            lines.append(f"| {label} | {_fmt(summary['roc_auc'])} | {_fmt(summary['pr_auc'])} | {at_rates} | "
                         f"{_fmt(a['precision'])} | {_fmt(a['recall'])} | {_rate(a['normal_alert_rate'])} | "
                         f"{a['alerts']} |")
        lines += ["", f"Rows {model['rows']}, frauds {model['frauds']}. Recall at an alert rate flags each model's "
                  "top share of these rows; precision, recall and the false-flag rate (normal rows flagged) are at "
                  "each model's threshold, chosen the same way on its own validation scores. The parts alone and "
                  "the baselines are fitted on the same training rows.", "",
                  *reference_gap(m),
                  f"Confusion matrix of the {served_label(m)} model at its threshold:", "",
                  "| | flagged | passed |", "|---|---|---|",
                  f"| fraud | {at['tp']} | {at['fn']} |", f"| normal | {at['fp']} | {at['tn']} |", ""]
    lines += ["## Threshold table", "", "Thresholds from the normal validation scores, applied to the evaluated rows.",
              "", "| rule | threshold | alerts | alert rate | precision | recall | F1 |",
              "|---|---|---|---|---|---|---|"]
    for row in m["table"]:
        lines.append(f"| {row['rule']} | {row['threshold']:.6g} | {row['alerts']} | {row['alert_rate']:.4%} | "
                     f"{_fmt(row.get('precision'))} | {_fmt(row.get('recall'))} | {_fmt(row.get('f1'))} |")
    if model.get("per_scenario"):
        parts = {LABELS[k]: v["per_scenario"] for k, v in (m.get("parts") or {}).items() if v.get("per_scenario")}
        lines += ["", "## Recall per fraud scenario", "", "Each model at its own threshold.", "",
                  "| scenario | frauds | detected | recall |" + "".join(f" {label} |" for label in parts),
                  "|---" * (4 + len(parts)) + "|"]
        for name, row in model["per_scenario"].items():
            others = "".join(f" {p[name]['recall']:.4f} |" for p in parts.values())
            lines.append(f"| {name} | {row['frauds']} | {row['detected']} | {row['recall']:.4f} |{others}")
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({file})" for title, file in images.items()]
    return "\n".join(lines) + "\n"


def write_report(
    report_dir: Path,
    document: dict,
    scores: dict[str, np.ndarray],
    labels: np.ndarray | None,
    history: dict[str, list[float]] | None = None,
    best_epoch: int = 0,
) -> Path:
    """Write `metrics.json`, the PNGs and `report.md` into `report_dir`; return the report path.

    `document` holds `metrics` (from `training.evaluate.evaluate`) plus free-form `title` and `about`.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    if history and history.get("loss"):
        plot_loss(history, best_epoch, report_dir / "loss.png")
        images["Loss curves"] = "loss.png"
    threshold = float(document["metrics"]["threshold"]["value"])
    plot_histogram(scores["model"], labels, threshold, report_dir / "scores.png")
    images["Score histogram"] = "scores.png"
    if labels is not None and 0 < labels.sum() < labels.size:
        plot_curves(scores, labels, document["metrics"], report_dir / "roc.png", report_dir / "pr.png")
        images.update({"ROC curves": "roc.png", "Precision-recall curves": "pr.png"})
    (report_dir / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")
    path = report_dir / "report.md"
    path.write_text(render_markdown(document, images))
    return path


def format_summary(metrics: dict) -> str:
    """A plain-text table of the held-out results for the terminal."""
    t = metrics["threshold"]
    lines = [f"threshold {t['value']:.6g} ({t['method']}, parameter {t['parameter']:g})", ""]
    model = metrics["model"]
    caveat = few_frauds_caveat(model["frauds"], f"the {model['rows']:,} evaluated rows") if "frauds" in model else None
    if caveat:
        lines += [f"caveat: {caveat}", ""]
    rates = list(model.get("recall_at_alert_rate") or {})
    width = max(22, *(len(label) for _, label, _ in model_rows(metrics)))
    lines.append(f"{'model':<{width}} {'ROC-AUC':>8} {'PR-AUC':>8} " + "".join(f"{'rec@' + r:>9} " for r in rates)
                 + "".join(f"{'rec@ff' + r:>11} " for r in rates)
                 + f"{'precision':>9} {'recall':>7} {'false-flag':>10} {'alerts':>7}")
    for _, label, summary in model_rows(metrics):
        a = summary["at_threshold"]
        at_rates = "".join(f"{_fmt(v):>9} " for v in (summary.get("recall_at_alert_rate") or {}).values()) + \
            "".join(f"{_fmt(v):>11} " for v in (summary.get("recall_at_false_flag_rate") or {}).values())
        lines.append(f"{label:<{width}} {_fmt(summary.get('roc_auc')):>8} {_fmt(summary.get('pr_auc')):>8} {at_rates}"
                     f"{_fmt(a.get('precision')):>9} {_fmt(a.get('recall')):>7} "
                     f"{_rate(a.get('normal_alert_rate')):>10} {a['alerts']:>7}")
    if rates:
        lines += ["", "rec@R: recall with the top R of the rows flagged; rec@ffR: recall with R of the normal rows "
                  "flagged"]
    lines += ["", f"{'threshold rule':<20} {'threshold':>10} {'alert rate':>10} {'precision':>9} {'recall':>7}"]
    for row in metrics["table"]:
        lines.append(f"{row['rule']:<20} {row['threshold']:>10.4g} {row['alert_rate']:>10.3%} "
                     f"{_fmt(row.get('precision')):>9} {_fmt(row.get('recall')):>7}")
    if metrics["model"].get("per_scenario"):
        lines += ["", f"{'scenario':<28} {'frauds':>6} {'recall':>7}"]
        for name, row in metrics["model"]["per_scenario"].items():
            lines.append(f"{name:<28} {row['frauds']:>6} {row['recall']:>7.3f}")
    return "\n".join(lines)
