"""The farm's queues and a Celery worker's command line: names only, so what needs no more than these (the
CLI's read commands, the embedded farm) does not pay for importing Celery."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

TASKS_QUEUE = "otto.tasks"  # coding jobs
CONTROL_QUEUE = "otto.control"  # batch callbacks, merges, run transitions
PILOT_QUEUE = "otto.pilot"  # LLM decisions
QUEUES = (TASKS_QUEUE, CONTROL_QUEUE, PILOT_QUEUE)


def worker_argv(
    queues: Sequence[str] = QUEUES,
    concurrency: int = 2,
    hostname: str | None = None,
    loglevel: str = "INFO",
    logfile: Path | None = None,
) -> list[str]:
    """The command line of a Celery worker process for this app."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "otto_farm.celery_app",
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "--loglevel",
        loglevel,
        # Mingle makes each starting worker wait a second for its peers' revoked ids, and gossip has
        # every worker follow every other's events; the farm uses neither (no revokes, no elections).
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv += ["-n", hostname]
    if logfile:
        argv += ["--logfile", str(logfile)]
    return argv
