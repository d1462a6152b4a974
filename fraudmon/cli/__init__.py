"""The `fraudmon` command line: one module per command group, each a thin layer of options and messages over
`fraudmon.tools`, `training` and `stream_app`. Heavy imports (TensorFlow, Faust) happen inside the commands that
need them."""

from __future__ import annotations

import typer

from fraudmon.cli.bench import bench_command
from fraudmon.cli.chaos import chaos_command
from fraudmon.cli.demo import demo_command
from fraudmon.cli.label import label_command
from fraudmon.cli.lists import lists_app
from fraudmon.cli.models import models_command, promote_command
from fraudmon.cli.produce import produce_command
from fraudmon.cli.replay import replay_command
from fraudmon.cli.simulate import simulate_command
from fraudmon.cli.stack import stack_app
from fraudmon.cli.train import evaluate_command, train_command
from fraudmon.cli.watch import tail_command, topics_command
from fraudmon.cli.worker import worker_command

app = typer.Typer(
    help="fraud-monitor: streaming card and payment fraud detection on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags shown as flags (rich help prints `<bool>` after each)
)
app.add_typer(stack_app, name="stack")
app.command("worker")(worker_command)
app.command("replay")(replay_command)
app.command("demo")(demo_command)
app.command("bench")(bench_command)
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
