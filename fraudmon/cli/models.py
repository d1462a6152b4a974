"""`fraudmon models` and `fraudmon promote`: the served model, its candidates, the gate and rollback."""

from __future__ import annotations

from pathlib import Path

import typer

from fraudmon.cli.common import ConfigOption, fail, settings_or_fail
from fraudmon.core.errors import FraudMonitorError
from fraudmon.tools.models import (
    describe,
    previous_path,
    promote,
    resolve_candidate,
    rollback,
    table,
    unserved_candidates,
)


def models_command(config: Path | None = ConfigOption) -> None:
    """List the served model, the one it replaced, and the candidates not served, with their key metrics.

    Example: fraudmon models
    """
    settings = settings_or_fail(config)
    served = settings.resolve(settings.worker.model_path)
    typer.echo(f"served     {describe(served)}")
    previous = previous_path(served)
    if previous.is_file():
        typer.echo(f"previous   {describe(previous)}")
    found, every = unserved_candidates(settings)
    for path in found:
        typer.echo(f"candidate  {describe(path)}")
    if not found:
        typer.echo(f"candidates none{' but the served one' if every else ''}: `fraudmon train ...` writes one to "
                   "models/candidates/")


def promote_command(
    candidate: str | None = typer.Argument(None, help="Candidate: its directory name under models/candidates/ "
                                                      "(a unique prefix will do), its directory, or its .onnx."),
    data: Path | None = typer.Option(None, "--data", "-d", exists=True, dir_okay=False,
                                     help="Recent labelled events to backtest on (JSON lines, CSV, card-holder CSV)."),
    truth: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                      help="Ground truth for --data (transaction_id,label,scenario)."),
    max_recall_drop: float = typer.Option(0.0, min=0.0, max=1.0,
                                          help="Refuse when recall falls by more than this (absolute)."),
    max_alert_rate_rise: float = typer.Option(0.25, min=0.0,
                                              help="Refuse when the alert rate rises by more than this share."),
    force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses (the card records it)."),
    rollback_: bool = typer.Option(False, "--rollback", help="Return to the model the last promotion replaced."),
    config: Path | None = ConfigOption,
) -> None:
    """Make a candidate the served model after a backtest gate; running workers switch through hot reload.

    Both models decide the labelled data through the worker's exact code (same rules). The candidate is refused,
    with the table, when it does not fit the data (stream_app/fit.py), or its recall drops or its alert rate rises
    beyond the limits. A served model that does not fit the data is said to be no baseline, and the candidate is
    judged on its own fit.

    Examples: fraudmon promote mymodel-20261123-ab12cd --data recent.jsonl --truth recent_truth.csv
              fraudmon promote --rollback
    """
    from fraudmon.core.eventfiles import is_json_lines, read_events_file, read_ground_truth
    from stream_app.replay import raw_messages

    settings = settings_or_fail(config)
    try:
        if rollback_:
            served, left = rollback(settings)
            typer.echo(f"rolled back: {served} is served again; {left} is not (to serve it again, promote it through "
                       "the gate)")
            return
        if candidate is None or data is None:
            fail("name a candidate and pass --data (labelled recent events), or use --rollback")
        candidate_onnx = resolve_candidate(settings, candidate)
        events, file_truth = (None, []) if is_json_lines(data) else read_events_file(data)
        labels = {t.transaction_id: t.label for t in (read_ground_truth(truth) if truth else file_truth)}
        messages = list(raw_messages(data, events))
        served, tested, problems = promote(settings, candidate_onnx, messages, labels,
                                           max_recall_drop=max_recall_drop, max_alert_rate_rise=max_alert_rate_rise,
                                           force=force)
    except FraudMonitorError as exc:
        fail(str(exc))
    typer.echo(table(served, tested))
    if served.misfit:
        typer.secho(f"warning: the served model is no baseline for this data, so the gate judged the candidate on "
                    f"its own fit: {served.misfit}", fg=typer.colors.YELLOW, err=True)
    if problems and not force:
        fail("promotion refused: " + "; ".join(problems) + " (--force overrides; the card records it)", code=1)
    target = settings.resolve(settings.worker.model_path)
    forced = " (forced past: " + "; ".join(problems) + ")" if problems else ""
    typer.echo(f"promoted {tested.version} to {target}{forced}; the replaced {served.version} is kept for "
               "`fraudmon promote --rollback`")
