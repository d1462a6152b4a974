"""`fraudmon train`: data → features → time split → autoencoder → ONNX (parity-checked) → threshold →
held-out evaluation with baselines → model card and report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fraudmon.core.errors import InputDataError
from fraudmon.core.events import format_timestamp
from stream_app.features import default_feature_names, vectorize
from training import evaluate as ev
from training.data import Dataset, Split, load_dataset, time_split
from training.export import build_card, export_onnx, onnx_scores, publish
from training.model import AutoencoderConfig, train_autoencoder
from training.report import few_frauds_caveat, write_report
from training.threshold import choose_threshold

PARITY_MAX_ROWS = 20_000
FEATURES_SHOWN = 10
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


PRESETS: dict[str, Preset] = {
    # Tuned on the validation slice of 100,000 simulated events (training/TUNING.md).
    "events": Preset(AutoencoderConfig(), "mean_std", 3.0, 20),
    # Tuned on the validation slice of creditcard_head.csv (training/TUNING.md): a wide bottleneck, the
    # threshold at the best validation F1 (mean+3std sits too low on these heavy-tailed scores).
    "creditcard": Preset(
        AutoencoderConfig(hidden=(64, 32, 24), epochs=150, batch_size=256, learning_rate=1e-3, patience=10),
        "max_f1", 1.0, 20,
    ),
}
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
    out_dir: Path = Path("models")
    report_dir: Path | None = None
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


def simulated_data(n_events: int, directory: Path) -> tuple[Path, Path]:
    """Simulate `n_events` with the simulator's defaults (fixed seed) into JSON lines + ground truth."""
    from training.simulate import SimulationConfig, simulate, write_events, write_ground_truth

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
        name = "creditcard" if dataset.source.get("format") == "creditcard" else "events"
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
    """The rows read and dropped, the labels, the time split and the features, plus warnings about the labels."""
    source, labels = dataset.source, dataset.labels
    dropped = int(source.get("dropped_nonfinite", 0))
    lines = [f"data: {source['path']} ({source['format']}): {dataset.rows_read:,} rows read"]
    if source.get("dropped_detail"):
        lines.append(f"NaN/inf cells per column: {', '.join(f'{k} {n:,}' for k, n in source['dropped_detail'].items())}"
                     f"; {dropped:,} rows dropped, {len(dataset):,} kept (--refuse-nonfinite fails instead)")
    else:
        lines.append("NaN/inf cells: none, no rows dropped")
    warnings = []
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
    ts = dataset.timestamps
    lines.append("split by time (train on the past, validate on the period after it, hold out the latest rows):")
    notes = ["all rows (no labels to filter by)"]
    if split.normal_only:
        left_out = int(labels.sum() - labels[split.val].sum() - labels[split.test].sum())
        notes = [f"normal only, {left_out:,} frauds left out"]
    notes += ["" if labels is None else f"{int(labels[rows].sum()):,} frauds" for rows in (split.val, split.test)]
    parts = zip(("train", "validation", "held-out"), (split.train, split.val, split.test), notes, strict=True)
    for label, rows, note in parts:
        span = f"{_when(ts[rows].min())} .. {_when(ts[rows].max())} UTC"
        lines.append(f"  {label:<10} {rows.size:>9,} rows  {note:<34} {span}")
    names = list(feature_names)
    shown = names if len(names) <= FEATURES_SHOWN else [*names[:FEATURES_SHOWN - 2], "…", *names[-2:]]
    lines.append(f"features: {len(names)} ({', '.join(shown)})")
    if labels is not None:
        caveat = few_frauds_caveat(int(labels[split.test].sum()), f"the {split.test.size:,} held-out rows")
        if caveat:
            warnings.append(f"{caveat}; use more data or a larger --test-fraction")
    return DataSummary(lines, warnings)


def _when(epoch_ms: int) -> str:
    return format_timestamp(int(epoch_ms))[:19].replace("T", " ")


def parity_rows(x: np.ndarray, seed: int) -> np.ndarray:
    """Up to 20,000 rows spread over the data; small data is resampled with jitter to reach 1,000."""
    if len(x) >= 1000:
        return x[np.linspace(0, len(x) - 1, min(len(x), PARITY_MAX_ROWS)).astype(int)]
    rng = np.random.default_rng(seed)
    extra = x[rng.integers(0, len(x), 1000 - len(x))]
    return np.concatenate([x, extra + rng.normal(0, 0.05, extra.shape).astype(np.float32)])


def train(request: TrainRequest) -> TrainResult:
    """Run the whole pipeline and publish `<out_dir>/<name>.onnx`, its card and the report."""
    started = time.perf_counter()
    data, truth = request.data, request.truth
    if request.simulate:
        data, truth = simulated_data(request.simulate, request.simulate_dir)
    if data is None:
        raise InputDataError("pass --data FILE (and --truth for event files) or --simulate N")
    dataset = load_dataset(data, truth, request.fmt, request.on_nonfinite)
    preset_name, preset = resolve_preset(request, dataset)
    config = preset.config
    names = default_feature_names(dataset.events)
    x = vectorize(dataset.events, names)
    split = time_split(dataset, request.test_fraction, request.val_fraction)
    check_threshold_method(preset.threshold_method, dataset, split)
    if request.on_data:
        request.on_data(summarize_data(dataset, split, names, preset))
    labels = dataset.labels
    val_normal = split.val if labels is None else split.val[labels[split.val] == 0]
    trained = train_autoencoder(x[split.train], x[val_normal], config, verbose=request.verbose)

    onnx_path = request.out_dir / f"{request.name}.onnx"
    card_path = onnx_path.with_suffix(".json")
    partial, sha, parity = export_onnx(trained, onnx_path, parity_rows(x, config.seed))
    try:
        scores = onnx_scores(partial, x)
        val_labels = None if labels is None else labels[split.val]
        threshold = choose_threshold(preset.threshold_method, scores[val_normal], preset.threshold_param,
                                     scores[split.val], val_labels)
        references = ev.reference_thresholds(scores[val_normal])
        n_components = preset.pca_components
        assessment = ev.assess(x, scores, labels, dataset.scenarios, split.test, threshold, references,
                               (split.train, split.val), config.seed, n_components)
        ts = dataset.timestamps
        training = {
            "command": request.command,
            "data": dataset.source,
            "preset": preset_name,
            "rows": len(dataset),
            "time_range": [format_timestamp(int(ts.min())), format_timestamp(int(ts.max()))],
            "normal_only": split.normal_only,
            "split": {"test_fraction": request.test_fraction, "val_fraction": request.val_fraction,
                      **split.summary(dataset)},
            "hyper_parameters": config.to_dict(),
            "seed": config.seed,
            "epochs_run": len(trained.history.get("loss", [])),
            "best_epoch": trained.best_epoch,
            "fit_seconds": round(trained.seconds, 2),
            "baselines": {"isolation_forest": {"n_estimators": 200}, "pca": {"n_components": n_components}},
        }
        card = build_card(name=request.name, onnx_sha256=sha, feature_names=names, threshold=threshold.to_dict(),
                          x_train=x[split.train],
                          val_normal_scores=scores[val_normal], training=training,
                          metrics=assessment.metrics, parity=parity, created=datetime.now(UTC))
        training["duration_seconds"] = round(time.perf_counter() - started, 2)
        report_dir = request.report_dir or request.out_dir / f"{request.name}-report"
        document = {"title": f"{card['name']} {card['version']}", "about": _about(card), "metrics": card["metrics"]}
        report_path = write_report(report_dir, document, assessment.scores, assessment.labels, trained.history,
                                   trained.best_epoch)
        card["training"]["report"] = str(report_path)
        publish(partial, onnx_path, card, card_path)
    finally:
        partial.unlink(missing_ok=True)
    return TrainResult(onnx_path, card_path, report_path, card)


def _about(card: dict[str, Any]) -> dict[str, str]:
    t = card["training"]
    split = t["split"]
    return {
        "data": f"{t['data']['path']} ({t['data']['format']}, {t['rows']} rows, sha256 {t['data']['sha256'][:12]}…)",
        "split by time": f"train {split['train']['rows']} rows{' (normal only)' if t['normal_only'] else ''}, "
                         f"validation {split['val']['rows']}, held-out test {split['test']['rows']} (last "
                         f"{split['test_fraction']:.0%})",
        "features": f"{card['n_features']}: {', '.join(card['feature_names'])}",
        "hyper-parameters": ", ".join(f"{k}={v}" for k, v in t["hyper_parameters"].items()),
        "command": t["command"] or "(library call)",
    }
