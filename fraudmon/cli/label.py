"""`fraudmon label`: post a reviewer's verdict on a transaction the worker decided."""

from __future__ import annotations

import getpass
import time
from pathlib import Path

import typer

from fraudmon.cli.common import ConfigOption, fail, settings_or_fail
from fraudmon.core.errors import FraudMonitorError
from fraudmon.core.events import Verdict
from fraudmon.tools.label import UndecidedTransaction, decided, post_verdict


def label_command(
    transaction_id: str = typer.Argument(..., help="The transaction the verdict is about."),
    fraud: bool = typer.Option(False, "--fraud", help="It was fraud."),
    legit: bool = typer.Option(False, "--legit", help="It was legitimate."),
    reviewer: str | None = typer.Option(None, "--reviewer", "-r", help="Who reviewed it (default: your login)."),
    note: str | None = typer.Option(None, "--note", "-n", help="A short note for the record."),
    force: bool = typer.Option(False, "--force", help="Post without checking that the worker decided the "
                                                     "transaction (Redis down, or decided too long ago)."),
    config: Path | None = ConfigOption,
) -> None:
    """Post a verdict on a transaction the worker decided: it counts the verdict against its decision
    (`fraud_verdicts_total{decision, verdict}`), and `fraudmon train --verdicts` can learn from it. A transaction
    the worker has no decision on (worker.verdict_window_s) is refused unless --force.

    Example: fraudmon label tx-0042 --fraud --reviewer ana --note "card reported stolen"
    """
    if fraud == legit:
        fail("say --fraud or --legit (exactly one)")
    settings = settings_or_fail(config)
    verdict = Verdict(transaction_id, "fraud" if fraud else "legit", reviewer or getpass.getuser(),
                      int(time.time() * 1000), note)
    try:
        decision = "not checked (--force)" if force else decided(settings, transaction_id)
        post_verdict(settings, verdict)
    except UndecidedTransaction as exc:
        fail(str(exc), code=1)
    except FraudMonitorError as exc:
        fail(str(exc))
    typer.echo(f"verdict {verdict.label} on {transaction_id} posted to {settings.topics.verdicts}; the worker's "
               f"decision: {decision}")
