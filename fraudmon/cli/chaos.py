"""`fraudmon chaos`: attack a real worker and count what was lost."""

from __future__ import annotations

from pathlib import Path

import typer

from fraudmon.cli.common import ConfigOption, settings_or_fail
from fraudmon.tools.chaos import SCENARIOS, TABLE_HEADER, run_scenario


def chaos_command(
    scenario: list[str] = typer.Option(
        list(SCENARIOS), "--scenario", "-s", help=f"Scenarios to run (repeat the option): {', '.join(SCENARIOS)}."),
    keep: Path | None = typer.Option(None, help="Keep the stacks' data and worker logs in this directory."),
    config: Path | None = ConfigOption,
) -> None:
    """Attack a real worker (poison messages, worker SIGKILL, Redis crash, broker restart) and print what was
    sent, decided, lost, duplicated and dead-lettered. Each scenario gets a stack of its own on free ports.

    Example: fraudmon chaos -s poison -s worker-kill
    """
    unknown = sorted(set(scenario) - set(SCENARIOS))
    if unknown:
        typer.secho(f"error: unknown scenario(s) {', '.join(unknown)}; use {', '.join(SCENARIOS)}", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(2)
    base = settings_or_fail(config)
    typer.echo(TABLE_HEADER)
    results = []
    for name in scenario:
        acc = run_scenario(name, base=base, workdir=keep)
        results.append(acc)
        typer.echo(acc.row())
        for note in acc.notes + acc.misnamed[:5]:
            typer.echo(f"    {note}")
    if not all(acc.ok for acc in results):
        raise typer.Exit(1)
