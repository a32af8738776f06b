"""Registers the commands; each lives in its own module."""

from __future__ import annotations

import typer

from otto_farm.cli.cancel import cancel
from otto_farm.cli.demo import demo
from otto_farm.cli.flower import flower
from otto_farm.cli.logs import logs
from otto_farm.cli.prune import prune
from otto_farm.cli.resume import resume
from otto_farm.cli.runs import runs
from otto_farm.cli.status import status
from otto_farm.cli.submit import submit
from otto_farm.cli.up import down, up
from otto_farm.cli.worker import worker

app = typer.Typer(
    name="otto-farm",
    help="Run many coding-agent tasks against one git repository, spread over Celery workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (submit, status, runs, logs, cancel, resume, prune, up, down, worker, flower, demo):
    app.command()(command)


def main() -> None:
    app()
