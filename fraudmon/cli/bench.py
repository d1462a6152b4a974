"""`fraudmon bench`: the worker's throughput and latency next to its peers."""

from __future__ import annotations

from pathlib import Path

import typer

from fraudmon.cli.common import ConfigOption, fail, settings_or_fail
from fraudmon.core.errors import FraudMonitorError
from fraudmon.tools.stack import LocalStack


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


