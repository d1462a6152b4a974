"""The `fraudmon` command line. Heavy imports (TensorFlow, Faust) happen inside the commands that need them."""

from __future__ import annotations

from pathlib import Path

import typer

from fraudmon.core.console import fail, settings_or_fail
from fraudmon.core.errors import FraudMonitorError
from fraudmon.tools.stack import LocalStack
from training.commands import (
    FORMAT_HELP,
    FraudValueOption,
    LabelColumnOption,
    TimeColumnOption,
    event_format,
    table_or_fail,
)

app = typer.Typer(
    help="fraud-monitor: streaming card and payment fraud detection on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags shown as flags (rich help prints `<bool>` after each)
)

stack_app = typer.Typer(help="Start, stop and inspect the local Kafka, Redis and Prometheus (no Docker).",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(stack_app, name="stack")

ConfigOption = typer.Option(
    None, "--config", "-c", help="YAML config (default config/monitor.yaml or $FRAUDMON_CONFIG)."
)




@stack_app.command("install")
def stack_install(config: Path | None = ConfigOption) -> None:
    """Fetch the Kafka jars (Maven) once and check Java, Redis and Prometheus are installed."""
    try:
        LocalStack(settings_or_fail(config)).install()
    except FraudMonitorError as exc:
        fail(str(exc))


@stack_app.command("up")
def stack_up(config: Path | None = ConfigOption) -> None:
    """Start Kafka (KRaft), Redis and Prometheus, wait until each answers, and create the topics."""
    settings = settings_or_fail(config)
    stack = LocalStack(settings)
    try:
        stack.up()
    except FraudMonitorError as exc:
        fail(str(exc))
    _print_status(stack)
    typer.echo(f"topics: {', '.join(settings.topics.all())} ({settings.topics.partitions} partitions)")


@stack_app.command("down")
def stack_down(config: Path | None = ConfigOption) -> None:
    """Stop the services that `stack up` started (and nothing else)."""
    stopped = LocalStack(settings_or_fail(config)).down()
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(config: Path | None = ConfigOption) -> None:
    """Print each service: up, starting, down, crashed or foreign (another program on its port). Exit 1 unless
    every port answers."""
    stack = LocalStack(settings_or_fail(config))
    if not _print_status(stack):
        raise typer.Exit(1)


def _print_status(stack: LocalStack) -> bool:
    """One line per service saying its state and what to do about it; True when every service's port answers."""
    for service in (statuses := stack.status()):
        detail = {
            "up": f"pid {service.pid}, log {service.log}",
            "starting": f"pid {service.pid}, not accepting connections yet; log {service.log}",
            "down": "not running (`fraudmon stack up` starts it)",
            "crashed": f"pid {service.pid} is gone (stopped without `fraudmon stack down`); its log: {service.log}"
                       + ("; another program now listens on its port" if service.running
                          else "; `fraudmon stack up` restarts it"),
            "foreign": "another program listens on this port (not started by fraudmon; `stack up` will use it "
                       "and `stack down` leaves it alone)",
        }[service.state]
        typer.echo(f"{service.name:<11} {service.state:<8} {service.address:<24} {detail}")
    return all(service.running for service in statuses)


@app.command("worker")
def worker_command(
    config: Path | None = ConfigOption,
    metrics_port: int | None = typer.Option(None, help="Port of /metrics (default from config)."),
    json_logs: bool = typer.Option(False, "--json-logs", help="One JSON object per log line."),
    log_level: str = typer.Option("info", help="debug, info, warning, error."),
    processes: int = typer.Option(1, "--processes", "-p", min=1, max=64,
                                  help="Worker processes in the consumer group (one per core; metrics on the port, "
                                       "port+1, ...). Each takes some of the input partitions."),
) -> None:
    """Run the stream worker (same as `faust -A stream_app.app worker`).

    Example: fraudmon worker --processes 2
    """
    import os
    import sys

    if config:
        os.environ["FRAUDMON_CONFIG"] = str(config)
    if metrics_port is not None:
        os.environ["FRAUDMON_METRICS_PORT"] = str(metrics_port)
    if json_logs:
        os.environ["FRAUDMON_LOG_JSON"] = "true"
    os.environ.setdefault("FRAUDMON_LOG_LEVEL", log_level.upper())
    settings = settings_or_fail(config)
    try:  # fail fast with a clear message before Faust starts
        from stream_app.runtime import build_engine, check_ports

        build_engine(settings)
        check_ports(settings)
    except FraudMonitorError as exc:
        fail(f"worker cannot start: {exc}")
    if processes > 1:
        from fraudmon.tools.harness import supervise_workers

        raise typer.Exit(supervise_workers(processes, settings.worker.metrics_port))
    from faust.cli.faust import cli as faust_cli

    web = ["--web-port", str(settings.worker.web_port)] if settings.worker.web_port else ["--without-web"]
    quiet = ["--quiet"] if settings.logging.json_logs else []  # no banner between the JSON lines
    sys.argv = ["faust", *quiet, "-A", "stream_app.app", "worker", "-l", log_level, *web]
    faust_cli()


@app.command("replay")
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
    model and the rules, per rule and action, optionally against a second rules file."""
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
            typer.echo(f"  recall {name:<28} {entry['recall']:.2f}  ({entry['flagged']}/{entry['frauds']})")


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
        line += (f"  | review+block: precision {caught / max(1, flagged):.3f}"
                 f"  recall {caught / max(1, frauds):.3f} ({caught}/{frauds} frauds)")
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
            precision = entry.precision()
            cells.append(f"{entry.hits:>7} {'-' if precision is None else f'{precision:.3f}':>6} "
                         f"{'-' if not labels else f'{entry.frauds / max(1, frauds):.3f}':>6} "
                         f"{entry.only_catches if labels else '-':>5} {entry.hits / max(1, len(decisions)):>7.4f}")
        lines.append(f"  {key[0]:<32} {key[1]:<7} {key[2]:<7}" + " | ".join(cells))
    return "\n".join(lines)


@app.command("demo")
def demo_command(
    duration: float = typer.Option(20.0, help="Seconds of simulated live traffic."),
    rate: float = typer.Option(1000.0, help="Events per second."),
    malformed: int = typer.Option(25, help="Malformed events mixed in (they must reach the dead-letter topic)."),
    seed: int = typer.Option(7, help="Simulator seed."),
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave Kafka, Redis and Prometheus up."),
    out_dir: Path = typer.Option(Path("demo-output"), help="Where the summary, ground truth and logs go."),
    config: Path | None = ConfigOption,
) -> None:
    """Bounded end-to-end demo on the local stack: stack up, worker, labelled stream, summary."""
    from fraudmon.tools.demo import run_demo

    settings = settings_or_fail(config)
    try:
        summary = run_demo(settings, duration_s=duration, rate=rate, malformed=malformed, seed=seed,
                           keep_running=keep_running, out_dir=out_dir)
    except FraudMonitorError as exc:
        fail(str(exc))
    if not summary["complete"]:
        fail("not every event reached a decision or the dead-letter topic in time", code=1)


@app.command("bench")
def bench_command(
    events: int = typer.Option(60000, min=2, help="Events pre-filled for the throughput runs."),
    rates: str = typer.Option("1000,5000", help="Comma-separated events/s for the latency runs."),
    max_share: float = typer.Option(
        0.8, min=0.0, max=1.0, help="Also measure latency at this share of the worker's measured maximum (0: no)."),
    seconds: float = typer.Option(10.0, min=0.5, help="Seconds of production per latency rate."),
    systems: str = typer.Option(
        "worker,worker2,aiokafka,faust,confluent,quix",
        help="Comma-separated systems: worker (model, all rules, Redis), worker2 (the same as two worker "
             "processes in one consumer group; throughput only), aiokafka and confluent (bare "
             "consume-and-produce passthroughs), faust (the worker's own Faust transport, batch hand-off, "
             "publisher and acks, with no engine), quix (Quix Streams: parse, features, one model call per "
             "event)."),
    out_dir: Path = typer.Option(Path("bench/results"), help="Where bench.json, bench.png and the logs go."),
    config: Path | None = ConfigOption,
) -> None:
    """Throughput and end-to-end latency of one worker next to peers on the same broker in the same run.

    Every system drains the same pre-filled topic (throughput = records / (last - first output append time));
    latency is output minus input append time at fixed rates, for the worker and the aiokafka and faust
    passthroughs. The clock is the broker's (LogAppendTime topics), read back after each run. Peers whose library
    is not installed (confluent-kafka, quixstreams: the `bench` extra of fraud-monitor) are skipped. Starts the
    local stack unless it runs."""
    from fraudmon.tools.bench import SYSTEMS, print_report, run_bench

    chosen = [name.strip() for name in systems.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown or not chosen:
        fail(f"--systems: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; choose from "
             f"{', '.join(SYSTEMS)}")
    try:
        rate_list = [int(rate) for rate in rates.split(",") if rate.strip()]
    except ValueError:
        fail(f"--rates: {rates!r} is not a comma-separated list of whole events/s")
    if any(rate <= 0 for rate in rate_list):
        fail("--rates: each rate must be above 0")
    settings = settings_or_fail(config)
    try:
        LocalStack(settings).up()
        report = run_bench(settings, events=events, rates=rate_list, seconds=seconds, out_dir=out_dir,
                           systems=chosen, max_share=max_share)
    except FraudMonitorError as exc:
        fail(str(exc))
    print_report(report)
    typer.echo(f"\nwritten: {out_dir / 'bench.json'}, {out_dir / 'bench.png'}")


# commands: each line registers one command from the module that owns it.
from fraudmon.tools.chaos import chaos_command  # noqa: E402
from fraudmon.tools.label import label_command  # noqa: E402
from fraudmon.tools.lists import lists_app  # noqa: E402
from fraudmon.tools.models import models_command, promote_command  # noqa: E402
from fraudmon.tools.produce import produce_command  # noqa: E402
from fraudmon.tools.watch import tail_command, topics_command  # noqa: E402
from training.commands import evaluate_command, train_command  # noqa: E402
from training.simulate import simulate_command  # noqa: E402

app.command("simulate")(simulate_command)
app.command("chaos")(chaos_command)
app.command("label")(label_command)
app.add_typer(lists_app, name="lists")
app.command("models")(models_command)
app.command("promote")(promote_command)
app.command("produce")(produce_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("tail")(tail_command)
app.command("topics")(topics_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
