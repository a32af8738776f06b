"""`otto-farm worker`: a Celery worker on otto-farm's queues, for this or another machine."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from otto_farm.cli.common import exits_cleanly
from otto_farm.embedded import reachable
from otto_farm.queues import QUEUES, worker_argv
from otto_farm.settings import Settings


@exits_cleanly
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues.")] = ",".join(QUEUES),
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once.")] = 2,
    hostname: Annotated[str | None, typer.Option(help="Celery node name, e.g. gpu1@%h.")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker (replaces this process) on the configured broker or the running embedded one."""
    settings = reachable(Settings.load())
    argv = worker_argv(queues.split(","), concurrency, hostname, loglevel)
    os.execve(sys.executable, argv, {**os.environ, **settings.env()})
