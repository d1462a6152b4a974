"""`fraudmon train` and `fraudmon evaluate`. TensorFlow is imported only inside `train`, so `fraudmon --help`,
`fraudmon evaluate` and the worker stay light; on a base install (no `train` extra) `train` says what to install
and `evaluate` scores with onnxruntime alone."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fraudmon.cli.common import (
    FORMAT_HELP,
    FraudValueOption,
    LabelColumnOption,
    TimeColumnOption,
    event_format,
    fail,
    settings_or_fail,
    table_or_fail,
)
from fraudmon.core.errors import FraudMonitorError
from fraudmon.tools.models import CANDIDATES_DIR

if TYPE_CHECKING:
    from training.train import DataSummary, TrainResult

TRAINER_MODULES = ("tensorflow", "keras", "tf2onnx", "onnx", "sklearn")
"""What the `train` extra installs and a base install lacks."""


def _show_data_summary(summary: DataSummary) -> None:
    """The data summary on stdout, each warning as a bold `WARNING:` line on stderr, then a blank line."""
    for line in summary.lines:
        typer.echo(line)
    for warning in summary.warnings:
        typer.secho(f"WARNING: {warning}", fg=typer.colors.YELLOW, bold=True, err=True)
    typer.echo("")


def _command_line(ctx: typer.Context, ignore: tuple[str, ...] = ("quiet",)) -> str:
    """The invoked command with the options that differ from their defaults (output-only ones left out)."""
    parts = ["fraudmon", ctx.info_name or "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in ignore or value is None or value == param.default:
            continue
        flag = param.opts[0]
        parts += [flag] if getattr(param, "is_flag", False) else [flag, str(value)]
    return shlex.join(parts)


def _where_it_went(result: TrainResult) -> None:
    """The model, card and report paths; for a candidate, how to promote it."""
    card = result.card
    typer.echo(f"\nmodel: {result.onnx_path} (version {card['version']}), card: {result.card_path}")
    typer.echo(f"report: {result.report_path}   training took {card['training']['duration_seconds']:.1f} s")
    if result.candidate:
        typer.echo(f"candidate {result.onnx_path.parent.name} written (the served model is unchanged); backtest "
                   f"and serve it with:\n  fraudmon promote {result.onnx_path.parent.name} --data RECENT_EVENTS "
                   "--truth RECENT_TRUTH")


def train_command(
    ctx: typer.Context,
    data: Path | None = typer.Option(None, "--data", exists=True, dir_okay=False,
                                     help="Events (JSON lines or CSV), the card-holder CSV, or a feature table."),
    truth: Path | None = typer.Option(None, "--truth", exists=True, dir_okay=False,
                                      help="Ground truth CSV (transaction_id,label,scenario) for event files."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    label_column: str | None = LabelColumnOption,
    fraud_value: str = FraudValueOption,
    time_column: str | None = TimeColumnOption,
    simulate: int | None = typer.Option(None, "--simulate", min=1000,
                                        help="Train on N freshly simulated events (simulator defaults, seed 42)."),
    labels: str = typer.Option("auto", "--labels", help="auto: add a supervised head to the autoencoder when the "
                               "training part holds enough frauds; off: the autoencoder alone."),
    supervised: str = typer.Option("auto", "--supervised", help="The supervised part: auto (the logistic head, or "
                                   "gradient-boosted trees when they beat it on validation by more than one "
                                   "standard error), logistic or trees."),
    verdicts: Path | None = typer.Option(None, "--verdicts", exists=True, dir_okay=False,
                                         help="Analysts' verdicts (JSON lines, fraud or legit): they override the "
                                              "labels of their transactions."),
    name: str = typer.Option("default", "--name", help="Model name: <name>.onnx and <name>.json."),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Write <out-dir>/<name>.onnx (default: a candidate "
                                        "in models/candidates/<name>-<version>/, which `fraudmon promote` serves)."),
    report_dir: Path | None = typer.Option(None, "--report-dir", help="Default <model dir>/<name>-report."),
    preset: str = typer.Option("auto", "--preset",
                               help="Hyper-parameter defaults: auto (by data format), events or creditcard."),
    threshold_method: str | None = typer.Option(
        None, "--threshold-method", help="mean_std, percentile, alert_rate or max_f1 (default: the preset's)."),
    threshold_param: float | None = typer.Option(
        None, "--threshold-param", help="k for mean_std, q for percentile, rate for alert_rate, beta for max_f1."),
    hidden: str | None = typer.Option(None, "--hidden", help="Encoder widths, e.g. 32,16,8 (decoder mirrors)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    learning_rate: float | None = typer.Option(None, "--learning-rate", min=0.0),
    patience: int | None = typer.Option(None, "--patience", min=1, help="Early-stopping patience (epochs)."),
    loss: str | None = typer.Option(None, "--loss", help="mse, mae or huber."),
    l2: float | None = typer.Option(None, "--l2", min=0.0, help="L2 weight penalty."),
    seed: int | None = typer.Option(None, "--seed"),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="Last share of time held out for testing."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Last share of the training period for validation."),
    refuse_nonfinite: bool = typer.Option(False, "--refuse-nonfinite",
                                          help="Fail on NaN/inf rows instead of dropping them."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch progress."),
) -> None:
    """Train the autoencoder (and a supervised head when labels allow), choose the threshold, evaluate on the
    held-out part and export ONNX + card as a candidate (never over the served model).

    Examples: fraudmon train --simulate 100000
              fraudmon train --data table.csv --format table --label-column label --fraud-value 0
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter (CUDA probing)
    try:
        from training.train import TrainRequest, train
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAINER_MODULES:
            raise
        fail("fraudmon train needs the trainer: pip install 'fraud-monitor[train]'")

    overrides = {k: v for k, v in {
        "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "patience": patience,
        "loss": loss, "l2": l2, "seed": seed,
    }.items() if v is not None}
    if hidden:
        try:
            overrides["hidden"] = tuple(int(w) for w in hidden.split(","))
        except ValueError:
            fail(f"--hidden must be comma-separated integers, got {hidden!r}")
    table = table_or_fail(fmt, label_column, fraud_value, time_column)
    settings = settings_or_fail(None)
    request = TrainRequest(
        data=data, truth=truth, fmt=event_format(fmt), table=table, simulate=simulate, name=name, out_dir=out_dir,
        candidates_dir=settings.resolve(settings.worker.model_path).parent / CANDIDATES_DIR, report_dir=report_dir,
        labels=labels, learner=supervised, verdicts=verdicts,
        preset=preset, threshold_method=threshold_method, threshold_param=threshold_param, overrides=overrides,
        test_fraction=test_fraction, val_fraction=val_fraction,
        on_nonfinite="raise" if refuse_nonfinite else "drop",
        verbose=0 if quiet else (1 if sys.stdout.isatty() else 2),
        command=_command_line(ctx), on_data=_show_data_summary,
    )
    try:
        result = train(request)
    except (FraudMonitorError, ValueError) as exc:
        fail(str(exc))
    from training.report import format_summary

    card = result.card
    split = card["training"]["split"]
    part = f"last {test_fraction:.0%} by time" if split["mode"] == "time" else f"{test_fraction:.0%} at random"
    typer.echo(f"\nheld-out evaluation ({split['test']['rows']} rows, {part})\n")
    typer.echo(format_summary(card["metrics"]))
    _where_it_went(result)


def evaluate_command(
    model: Path = typer.Option(Path("models/default.onnx"), "--model", help="ONNX model; its card is the .json."),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help="Events or card-holder CSV."),
    truth: Path | None = typer.Option(None, "--truth", exists=True, dir_okay=False, help="Ground truth CSV."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    label_column: str | None = LabelColumnOption,
    fraud_value: str = FraudValueOption,
    time_column: str | None = TimeColumnOption,
    part: str = typer.Option("auto", "--part", help="holdout (the training split's test rows), all, or auto "
                             "(holdout when the file is the card's training data)."),
    report_dir: Path | None = typer.Option(None, "--report-dir", help="Default runs/<model>-evaluation."),
) -> None:
    """Re-run the evaluation of a model with onnxruntime only (no TensorFlow) and write a report. A model that does
    not fit the data (a model for other traffic) is named, and the command exits 1."""
    from training.evaluate import evaluate_file
    from training.report import format_summary, write_report

    table = table_or_fail(fmt, label_column, fraud_value, time_column)
    try:
        document, assessment = evaluate_file(model, data, truth, event_format(fmt), part, table)
    except (FraudMonitorError, ValueError) as exc:
        fail(str(exc))
    report_dir = report_dir or Path("runs") / f"{model.stem}-evaluation"
    path = write_report(report_dir, document, assessment.scores, assessment.labels)
    about = document["about"]
    typer.echo(f"{document['title']} ({about['evaluated part']})")
    for key in ("in-sample", "baselines"):
        if key in about:
            typer.secho(f"{key}: {about[key]}", fg=typer.colors.YELLOW)
    typer.echo("")
    typer.echo(format_summary(document["metrics"]))
    typer.echo(f"\nreport: {path}")
    if "does not fit" in about:
        fail(f"{about['does not fit']} (the figures above are void)", code=1)
