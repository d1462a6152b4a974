"""`fraudmon replay`: a file decided offline through the worker's decision code, per rule and action."""

from __future__ import annotations

from pathlib import Path

import typer

from fraudmon.cli.common import (
    FORMAT_HELP,
    ConfigOption,
    FraudValueOption,
    LabelColumnOption,
    TimeColumnOption,
    event_format,
    fail,
    settings_or_fail,
    table_or_fail,
)
from fraudmon.core import rates
from fraudmon.core.errors import FraudMonitorError


def replay_command(
    data: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="Events (JSON lines or CSV), the card-holder CSV, or a feature table."),
    truth: Path | None = typer.Option(None, exists=True, help="Ground truth CSV (transaction_id,label,scenario)."),
    rules: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                      help="Rules file to backtest (default: the worker's, config/rules.yaml)."),
    against: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                        help="A second rules file, backtested on the same events, side by side."),
    lists: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                      help="List entries for the backtest (JSON lines, as `fraudmon lists show "
                                           "--json` prints); default: every list empty."),
    out: Path | None = typer.Option(None, help="Write every decision as JSON lines here."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    label_column: str | None = LabelColumnOption,
    fraud_value: str = FraudValueOption,
    time_column: str | None = TimeColumnOption,
    config: Path | None = ConfigOption,
) -> None:
    """Decide a file offline through the worker's exact decision code (in-process rule state): a backtest of the
    model and the rules, per rule and action, optionally against a second rules file. Exits 1, saying why, when
    the model does not fit the file's events (`stream_app.fit`): its flags there mean nothing."""
    import json

    from fraudmon.core.eventfiles import is_json_lines, read_events_file, read_ground_truth
    from stream_app.replay import offline_engine, raw_messages, recall_by_scenario, replay
    from stream_app.rules import load_rules

    table = table_or_fail(fmt, label_column, fraud_value, time_column)
    settings = settings_or_fail(config)
    try:
        entries = _backtest_lists(lists)
        rule_files = [rules or settings.resolve(settings.worker.rules_path)] + ([against] if against else [])
        rulesets = [load_rules(path) for path in rule_files]
        events, file_truth = (None, []) if table is None and is_json_lines(data) else \
            read_events_file(data, fmt=event_format(fmt), table=table)
        labels = {t.transaction_id: (t.label, t.scenario) for t in (read_ground_truth(truth) if truth else file_truth)}
        results = [replay(raw_messages(data, events), offline_engine(settings, ruleset, entries))
                   for ruleset in rulesets]
    except FraudMonitorError as exc:
        fail(str(exc))
    if out:
        with out.open("w") as handle:
            for decision in results[0].decisions:
                handle.write(json.dumps(decision) + "\n")
    truth_labels = {tx: label for tx, (label, _) in labels.items()}
    for path, result in zip(rule_files, results, strict=True):
        typer.echo(f"{path}: " + _action_line(result.decisions, truth_labels)
                   + f"  dead letters: {len(result.dead_letters)}")
    typer.echo(_rule_table([result.decisions for result in results], truth_labels, [str(p) for p in rule_files]))
    if labels:
        for name, entry in recall_by_scenario(results[0].decisions, labels).items():
            typer.echo(f"  recall {name:<28} {rates.shown(entry['recall'], 2)}  ({entry['flagged']}/{entry['frauds']})")
    for problem in results[0].misfits:  # one model for every rules file: the backtest above is void
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    if results[0].misfits:
        raise typer.Exit(1)


def _backtest_lists(path: Path | None):
    from stream_app.lists import load_static_lists

    return load_static_lists(path) if path else {}


def _action_line(decisions: list[dict], labels: dict[str, int]) -> str:
    """`decisions 1000  allow 950  review 45  block 5`, with precision and recall of review+block when labelled."""
    from stream_app.replay import action_counts

    counts = action_counts(decisions, labels)
    line = f"decisions {len(decisions)}  " + "  ".join(f"{action} {n}" for action, (n, _) in counts.items())
    frauds = sum(labels.get(d["transaction_id"], 0) for d in decisions)
    if labels:
        flagged = counts["review"][0] + counts["block"][0]
        caught = counts["review"][1] + counts["block"][1]
        line += (f"  | review+block: precision {rates.shown(rates.precision(caught, flagged))}"
                 f"  recall {rates.shown(rates.recall(caught, frauds))} ({caught}/{frauds} frauds)")
    return line


def _rule_table(runs: list[list[dict]], labels: dict[str, int], names: list[str]) -> str:
    """Per rule and action, one column group per rules file: hits, precision, recall, frauds only it caught,
    and alert rate (hits per decision)."""
    from stream_app.replay import rule_performance

    tables = [{(e.rule, e.action, e.mode): e for e in rule_performance(decisions, labels)} for decisions in runs]
    keys = list(dict.fromkeys(key for table in tables for key in table))
    frauds = sum(labels.get(d["transaction_id"], 0) for d in runs[0])
    group = f"{'hits':>7} {'prec':>6} {'recall':>6} {'only':>5} {'rate':>7}"
    lines = ["per rule (prec and recall against the ground truth; only: frauds no other acting rule or the model "
             "caught; rate: hits per decision)" + ("" if len(runs) == 1 else "; columns: " + " | ".join(names)),
             f"  {'rule':<32} {'action':<7} {'mode':<7}" + " | ".join([group] * len(runs))]
    for key in keys:
        cells = []
        for table, decisions in zip(tables, runs, strict=True):
            entry = table.get(key)
            if entry is None:
                cells.append(f"{'-':>7} {'':>6} {'':>6} {'':>5} {'':>7}")
                continue
            recall = rates.recall(entry.frauds, frauds) if labels else None
            cells.append(f"{entry.hits:>7} {rates.shown(entry.precision()):>6} {rates.shown(recall):>6} "
                         f"{entry.only_catches if labels else '-':>5} {entry.hits / max(1, len(decisions)):>7.4f}")
        lines.append(f"  {key[0]:<32} {key[1]:<7} {key[2]:<7}" + " | ".join(cells))
    return "\n".join(lines)


