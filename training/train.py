"""`fraudmon train`: the I/O around `FraudDetector`. Data (+ analysts' verdicts) → features → split → a detector
fitted on the training part and validation slice → held-out evaluation next to its parts alone and the
baselines → the served detector refitted on every row with the settings that fit chose → one ONNX graph
(parity-checked) → a candidate (model card and report) that `fraudmon promote` can serve."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fraudmon.core.errors import InputDataError
from fraudmon.core.eventfiles import TableSpec
from fraudmon.core.events import format_timestamp
from stream_app.features import BUILTIN, default_feature_names, vectorize
from training import evaluate as ev
from training.data import Dataset, Split, load_dataset, split_dataset
from training.detector import LEARNERS, FraudDetector
from training.export import build_card, explanation_card, model_version, publish
from training.hybrid import LABEL_MODES, head_problem
from training.model import AutoencoderConfig
from training.report import few_frauds_caveat, write_report
from training.trees import default_gradient_boosting

FEATURES_SHOWN = 10
MAX_SERVED_FEATURES = 256
"""The worker's default `events.max_features`: an event carrying more precomputed features is a dead letter."""
LABEL_METHODS = ("max_f1",)
"""Threshold methods that need labelled validation rows."""


@dataclass(frozen=True)
class Preset:
    """Defaults for one kind of data (hyper-parameters, threshold, PCA baseline size); the command line overrides
    the hyper-parameters and the threshold."""

    config: AutoencoderConfig
    threshold_method: str
    threshold_param: float | None
    pca_components: int
    head_threshold: tuple[str, float] | None = None
    """The threshold method and parameter when a supervised head is fitted (None: the same as without)."""


PRESETS: dict[str, Preset] = {
    # Tuned on the validation slice of 100,000 simulated events (training/TUNING.md). With a head, the combined
    # score's normal tail is long (mean+3std flags 0.02% of normal validation rows): flag the top 0.5% instead.
    "events": Preset(AutoencoderConfig(), "mean_std", 3.0, 20, ("alert_rate", 0.005)),
    # Tuned on the validation slice of creditcard_head.csv (training/TUNING.md): a wide bottleneck, the
    # threshold at the best validation F1 (mean+3std sits too low on these heavy-tailed scores).
    "creditcard": Preset(
        AutoencoderConfig(hidden=(64, 32, 24), epochs=150, batch_size=256, learning_rate=1e-3, patience=10),
        "max_f1", 1.0, 20,
    ),
}
PRESETS["table"] = PRESETS["creditcard"]  # precomputed numeric columns, like the card-holder V1..V28
"""Defaults per kind of data (`--preset`, chosen from the data format by default)."""


@dataclass
class TrainRequest:
    """What `fraudmon train` was asked to do. `overrides` are AutoencoderConfig fields set explicitly."""

    data: Path | None = None
    truth: Path | None = None
    fmt: str = "auto"
    simulate: int | None = None
    simulate_dir: Path = Path("runs/simulated")
    name: str = "default"
    out_dir: Path | None = None
    """Where `<name>.onnx` goes; None writes a candidate to `candidates_dir/<name>-<version>/`."""
    candidates_dir: Path = Path("models/candidates")
    report_dir: Path | None = None
    labels: str = "auto"
    """`auto`: a supervised head when the training part holds enough frauds; `off`: the autoencoder alone."""
    learner: str = "auto"
    """The supervised part (`training.detector.LEARNERS`): both fitted and chosen on validation, or one."""
    verdicts: Path | None = None
    table: TableSpec | None = None
    preset: str = "auto"
    threshold_method: str | None = None
    threshold_param: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    test_fraction: float = 0.3
    val_fraction: float = 0.2
    on_nonfinite: str = "drop"
    verbose: int = 1
    command: str | None = None
    on_data: Callable[[DataSummary], None] | None = None
    """Called with the data summary once the data is loaded and split, before the first epoch (the CLI prints it)."""


@dataclass
class DataSummary:
    """What training is about to fit on, for the user to check before waiting for the epochs."""

    lines: list[str]
    warnings: list[str]


@dataclass
class TrainResult:
    onnx_path: Path
    card_path: Path
    report_path: Path
    card: dict[str, Any]
    candidate: bool = False
    """True when written to the candidates directory (promote it with `fraudmon promote <directory name>`)."""
    evaluated: FraudDetector | None = None
    """The detector fitted on the training part and validation slice, whose held-out figures the card reports."""
    served: FraudDetector | None = None
    """The detector refitted on every row: the exported graph."""


def simulated_data(n_events: int, directory: Path) -> tuple[Path, Path]:
    """Simulate `n_events` with the simulator's defaults (fixed seed) into JSON lines + ground truth."""
    from fraudmon.core.eventfiles import write_events, write_ground_truth
    from training.simulate import SimulationConfig, simulate

    config = SimulationConfig(n_events=n_events)
    directory.mkdir(parents=True, exist_ok=True)
    events_path = directory / f"events-{n_events}-seed{config.seed}.jsonl"
    truth_path = directory / f"truth-{n_events}-seed{config.seed}.csv"
    events, truth = simulate(config)
    write_events(events_path, events)
    write_ground_truth(truth_path, truth)
    return events_path, truth_path


def resolve_preset(request: TrainRequest, dataset: Dataset) -> tuple[str, Preset]:
    """The preset for the data, with the request's explicit hyper-parameters and threshold on top."""
    name = request.preset
    if name == "auto":
        name = {"creditcard": "creditcard", "table": "table"}.get(dataset.source.get("format"), "events")
    if name not in PRESETS:
        raise InputDataError(f"unknown preset {request.preset!r}; choose auto or one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    config = replace(preset.config, **request.overrides)
    method, param = preset.threshold_method, preset.threshold_param
    if method in LABEL_METHODS and dataset.labels is None:
        method, param = "mean_std", 3.0  # the preset's choice needs labels; fall back to the label-free default
    if request.threshold_method:
        method, param = request.threshold_method, None
    if request.threshold_param is not None:
        param = request.threshold_param
    return name, replace(preset, config=config, threshold_method=method, threshold_param=param)


def check_threshold_method(method: str, dataset: Dataset, split: Split) -> None:
    """Refuse a label-based threshold method before training rather than after it, when it cannot work."""
    if method not in LABEL_METHODS:
        return
    other = "mean_std, percentile or alert_rate"
    if dataset.labels is None:
        raise InputDataError(f"the threshold method {method} needs labels, and this data has none; pass them "
                             f"(--truth, or the Class column) or choose --threshold-method {other}")
    if not dataset.labels[split.val].any():
        raise InputDataError(f"the threshold method {method} needs frauds among the validation rows, and the "
                             f"{split.val.size} validation rows hold none; choose --threshold-method {other}, or "
                             "use data with more frauds")


def summarize_data(dataset: Dataset, split: Split, feature_names: Sequence[str], preset: Preset) -> DataSummary:
    """The rows read and dropped, the labels, the split and the features, plus warnings about the labels."""
    source, labels = dataset.source, dataset.labels
    dropped = int(source.get("dropped_nonfinite", 0))
    lines = [f"data: {source['path']} ({source['format']}): {dataset.rows_read:,} rows read"]
    warnings = []
    if source.get("dropped_detail"):
        lines.append(f"NaN/inf cells per column: {', '.join(f'{k} {n:,}' for k, n in source['dropped_detail'].items())}"
                     f"; {dropped:,} rows dropped, {len(dataset):,} kept (--refuse-nonfinite fails instead)")
    else:
        lines.append("NaN/inf cells: none, no rows dropped")
    if source.get("skipped"):
        warnings.append(f"{len(source['skipped'])} columns hold text and are skipped (not features): "
                        + "; ".join(f"{name} ({example})" for name, example in source["skipped"].items()))
    if labels is None:
        lines.append(f"labels: none, all {len(dataset):,} rows treated as normal")
        where = "the file has no Class column" if source["format"] == "creditcard" else "pass --truth FILE"
        warnings.append(
            f"no labels given ({where}): every row is treated as normal, so frauds in the data are trained on as "
            f"normal, the evaluation cannot report precision or recall, and threshold methods that need labels "
            f"({', '.join(LABEL_METHODS)}) cannot be used; threshold method: {preset.threshold_method}"
        )
    else:
        frauds = int(labels.sum())
        lines.append(f"labels ({dataset.label_origin}): {len(labels) - frauds:,} normal, {frauds:,} fraud "
                     f"({frauds / len(labels):.2%})")
    if source.get("verdicts"):
        v = source["verdicts"]
        lines.append(f"verdicts: {v['read']:,} read ({v['fraud']:,} fraud, {v['legit']:,} legit), "
                     f"{v['labels_changed']:,} labels changed, {v['unknown_transactions']:,} name no transaction here")
    ts = dataset.timestamps
    if split.fallback:
        warnings.append(split.fallback)
    lines.append("split by time (train on the past, validate on the period after it, hold out the latest rows):"
                 if split.mode == "time" else
                 f"split at random ({'see the warning' if split.fallback else 'no time column'}; seed "
                 f"{preset.config.seed}): train, validation, held-out")
    notes = ["all rows (no labels to filter by)"]
    if split.normal_only:
        notes = [f"normal only, {int(labels[split.past].sum()):,} frauds left out"]
    notes += ["" if labels is None else f"{int(labels[rows].sum()):,} frauds" for rows in (split.val, split.test)]
    parts = zip(("train", "validation", "held-out"), (split.train, split.val, split.test), notes, strict=True)
    for label, rows, note in parts:
        span = f"  {_when(ts[rows].min())} .. {_when(ts[rows].max())} UTC" if split.mode == "time" else ""
        lines.append(f"  {label:<10} {rows.size:>9,} rows  {note:<34}{span}".rstrip())
    names = list(feature_names)
    shown = names if len(names) <= FEATURES_SHOWN else [*names[:FEATURES_SHOWN - 2], "…", *names[-2:]]
    lines.append(f"features: {len(names)} ({', '.join(shown)})")
    if source["format"] == "table" and len(names) > MAX_SERVED_FEATURES:
        warnings.append(f"{len(names)} features: events carrying them exceed the worker's default "
                        f"events.max_features ({MAX_SERVED_FEATURES}); raise it to serve this model")
    if labels is not None:
        caveat = few_frauds_caveat(int(labels[split.test].sum()), f"the {split.test.size:,} held-out rows")
        if caveat:
            warnings.append(f"{caveat}; use more data or a larger --test-fraction")
    return DataSummary(lines, warnings)


def _when(epoch_ms: int) -> str:
    return format_timestamp(int(epoch_ms))[:19].replace("T", " ")


def feature_names_of(dataset: Dataset) -> list[str]:
    """A table's numeric columns, or the default features of events (`default_feature_names`)."""
    columns = dataset.source.get("features")
    if columns is None:
        return default_feature_names(dataset.events)
    clashing = [name for name in columns if name in BUILTIN]
    if clashing:
        raise InputDataError(f"columns {', '.join(clashing)} have the names of built-in features, which are "
                             "computed from an event instead of read from it; rename them in the table")
    return list(columns)


def train(request: TrainRequest) -> TrainResult:
    """Run the whole pipeline and publish the model, its card and the report (a candidate unless `out_dir`)."""
    started = time.perf_counter()
    data, truth = request.data, request.truth
    if request.simulate:
        data, truth = simulated_data(request.simulate, request.simulate_dir)
    if data is None:
        raise InputDataError("pass --data FILE (and --truth for event files) or --simulate N")
    if request.labels not in LABEL_MODES:
        raise InputDataError(f"unknown --labels {request.labels!r}: use {' or '.join(LABEL_MODES)}")
    if request.learner not in LEARNERS:
        raise InputDataError(f"unknown --supervised {request.learner!r}: use {', '.join(LEARNERS)}")
    dataset = load_dataset(data, truth, request.fmt, request.on_nonfinite, request.table, request.verdicts)
    preset_name, preset = resolve_preset(request, dataset)
    config = preset.config
    names = feature_names_of(dataset)
    x = vectorize(dataset.events, names)
    split = split_dataset(dataset, request.test_fraction, request.val_fraction, seed=config.seed)
    check_threshold_method(preset.threshold_method, dataset, split)
    labels = dataset.labels
    no_head = head_problem(labels, split.past, split.val, request.labels)
    summary = summarize_data(dataset, split, names, preset)
    summary.lines.append("supervised part: " + (
        f"none, the autoencoder alone ({no_head})" if no_head else
        f"{'logistic head or gradient-boosted trees' if request.learner == 'auto' else request.learner}, "
        "chosen on out-of-fold scores of the validation slice"))
    summary.lines.append(f"served model: refitted on all {len(dataset):,} rows with the settings chosen on the "
                         "split; the held-out figures are those of the fit before it")
    if request.on_data:
        request.on_data(summary)
    if not no_head and preset.head_threshold and not request.threshold_method:
        method, param = preset.head_threshold
        preset = replace(preset, threshold_method=method, threshold_param=param if request.threshold_param is None
                         else request.threshold_param)
    past = np.concatenate([split.past, split.val])
    everything = np.concatenate([past, split.test])
    detector = FraudDetector(config, labels=request.labels, val_fraction=request.val_fraction,
                             threshold_method=preset.threshold_method, threshold_param=preset.threshold_param,
                             verbose=request.verbose, learner=request.learner).fit(
                                 x[past], None if labels is None else labels[past])
    assessment = ev.assess(x, detector.score_samples(x), labels, dataset.scenarios, split.test, detector.threshold_,
                           ev.reference_thresholds(detector.normal_scores_), (split.train, split.val), config.seed,
                           preset.pca_components, detector.score_parts(x) or None)
    if not no_head:
        add_supervised_reference(assessment, x[past], labels[past], x[split.test], config.seed)
    served = detector.refit(x[everything], None if labels is None else labels[everything])

    created = datetime.now(UTC)
    staging = request.out_dir or request.candidates_dir
    exported = served.to_onnx(staging / f"{request.name}.onnx.partial")
    directory = request.out_dir or staging / f"{request.name}-{model_version(exported.sha256, created)}"
    onnx_path = directory / f"{request.name}.onnx"
    card_path = onnx_path.with_suffix(".json")
    try:
        learned = np.sort(everything if labels is None else everything[labels[everything] == 0])
        training = _training_summary(request, dataset, split, preset_name, preset, detector, served, everything)
        card = build_card(name=request.name, onnx_sha256=exported.sha256, feature_names=names,
                          threshold=served.threshold_.to_dict(), expected_alert_rate=served.expected_alert_rate_,
                          normal_scores=served.normal_scores_, x_train=x[learned], training=training,
                          metrics=assessment.metrics, parity=exported.parity, created=created, parts=served.parts(),
                          explanation=explanation_card([dataset.events[i] for i in learned], names))
        training["duration_seconds"] = round(time.perf_counter() - started, 2)
        report_dir = request.report_dir or directory / f"{request.name}-report"
        document = {"title": f"{card['name']} {card['version']}", "about": _about(card), "metrics": card["metrics"]}
        report_path = write_report(report_dir, document, assessment.scores, assessment.labels,
                                   detector.autoencoder_.history, detector.autoencoder_.best_epoch)
        card["training"]["report"] = str(report_path)
        directory.mkdir(parents=True, exist_ok=True)
        publish(exported.path, onnx_path, card, card_path)
    finally:
        exported.path.unlink(missing_ok=True)
    return TrainResult(onnx_path, card_path, report_path, card, request.out_dir is None, detector, served)


def add_supervised_reference(assessment: ev.Assessment, x_fit: np.ndarray, y_fit: np.ndarray,
                             x_test: np.ndarray, seed: int) -> None:
    """The report's supervised reference: scikit-learn's `HistGradientBoostingClassifier` with its defaults,
    fitted on the labelled rows the detector learned from, scored on the held-out rows (flagging at probability
    0.5, its decision function above 0): `metrics["reference"]["gradient_boosting"]`."""
    model = default_gradient_boosting(seed).fit(np.asarray(x_fit, np.float64), y_fit)
    scores = model.decision_function(np.asarray(x_test, np.float64))
    assessment.metrics["reference"] = {"gradient_boosting": ev.summarize(scores, assessment.labels, 0.0)}
    assessment.scores["gradient_boosting"] = scores


def _training_summary(request: TrainRequest, dataset: Dataset, split: Split, preset_name: str, preset: Preset,
                      detector: FraudDetector, served: FraudDetector, everything: np.ndarray) -> dict[str, Any]:
    """The card's `training`: data, split, settings, how the evaluated fit went, and what the served model
    learned from and where the card's figures come from (`served`)."""
    ts = dataset.timestamps
    config = detector.config
    rows = served.fitted_on_
    frauds = "" if rows["frauds"] is None else f", {rows['frauds']:,} frauds"
    settings = {"epochs": served.config.epochs, "threshold": f"{served.threshold_.method} "
                f"{served.threshold_.parameter:g}, carried over at the same rank among the normal rows each fit "
                "learned from"}
    if served.head_ is not None:
        settings.update(supervised=served.learner_choice_["chosen"], alpha=served.combination_.alpha_)
        settings.update({"head_C": served.head_.c_} if hasattr(served.head_, "c_") else
                        {"class_weight": str(served.head_.class_weight_)})
    return {
        "command": request.command,
        "data": dataset.source,
        "preset": preset_name,
        "rows": len(dataset),
        "time_range": [format_timestamp(int(ts.min())), format_timestamp(int(ts.max()))],
        "normal_only": split.normal_only,
        "split": {"test_fraction": request.test_fraction, "val_fraction": request.val_fraction,
                  **split.summary(dataset)},
        "labels": request.labels,
        "hyper_parameters": config.to_dict(),
        "seed": config.seed,
        "epochs_run": len(detector.autoencoder_.history.get("loss", [])),
        "best_epoch": detector.autoencoder_.best_epoch,
        "fit_seconds": round(detector.autoencoder_.seconds, 2),
        "baselines": {"isolation_forest": {"n_estimators": 200}, "pca": {"n_components": preset.pca_components},
                      "kmeans": {"n_clusters": ev.KMEANS_CLUSTERS, "distance": "to the nearest centroid"}},
        "served": {
            "learned_from": f"every row of the data: {rows['rows']:,} rows{frauds} ({rows['autoencoder_rows']:,} "
                            f"normal rows for the autoencoder), {format_timestamp(int(ts[everything].min()))} to "
                            f"{format_timestamp(int(ts[everything].max()))}",
            "settings_from_split": settings,
            "refit_seconds": round(served.autoencoder_.seconds, 2),
            "figures": "metrics: the held-out part scored by the detector fitted on the training part and the "
                       "validation slice only (same settings); threshold, expected_alert_rate and score "
                       "percentiles: that detector's normal validation scores, carried into the served model's "
                       "units by rank among the normal rows each learned from",
        },
    }


def _about(card: dict[str, Any]) -> dict[str, str]:
    t = card["training"]
    split = t["split"]
    parts = card["parts"]
    where = f"last {split['test_fraction']:.0%}" if split["mode"] == "time" else \
        f"{split['test_fraction']:.0%} drawn at random with seed {t['seed']}: " + \
        split.get("fallback", "the table has no time column")
    return {
        "data": f"{t['data']['path']} ({t['data']['format']}, {t['rows']} rows, sha256 {t['data']['sha256'][:12]}…)",
        f"split by {split['mode']}": f"train {split['train']['rows']} rows"
                                     f"{' (normal only)' if t['normal_only'] else ''}, validation "
                                     f"{split['val']['rows']}, held-out test {split['test']['rows']} ({where})",
        "features": f"{card['n_features']}: {', '.join(card['feature_names'])}",
        "hyper-parameters": ", ".join(f"{k}={v}" for k, v in t["hyper_parameters"].items()),
        "parts": f"autoencoder + supervised part ({parts['head']['learner']['why']})" if parts.get("head") else
                 f"autoencoder alone (no head: {parts['head_skipped']})",
        "combination": parts["combination"],
        "served model": f"refitted on {t['served']['learned_from']}; the figures below are the held-out part's, "
                        "scored by the fit on the training part and validation slice",
        "command": t["command"] or "(library call)",
    }
