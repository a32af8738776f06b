"""`otto-farm retry`: one task of an ended run again, with feedback, merged into its integration branch."""

from __future__ import annotations

from typing import Annotated

import typer

from otto_farm import recovery
from otto_farm.cli.common import RunId, Workers, connected, console, exits_cleanly, print_run
from otto_farm.cli.submit import follow, interrupted, lasting
from otto_farm.errors import InputError
from otto_farm.models import RunStatus, TaskStatus


@exits_cleanly
def retry(
    run_id: RunId,
    task: Annotated[str, typer.Argument(help="Task key.")],
    feedback: Annotated[
        str | None, typer.Option("--feedback", help="What its agent should do this time (retry guidance).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the run to its end.")] = True,
    workers: Workers = 2,
) -> None:
    """Run one task of an ended run again from the integration branch, and merge it there; the tasks
    skipped because it failed run after it if it passes."""
    if not wait and not lasting():  # a farm started for this command would stop as it returns
        raise InputError("--no-wait", "", "needs a running farm: start one with `otto-farm up`")
    with connected(workers) as (store, proc):
        seen = store.events(run_id)  # the run's old events, up to its end: follow what comes after
        record = recovery.retry(store, run_id, task, feedback)
        console.print(
            f"run {run_id}: {task} again (run {record.tasks[task].runs}) on {record.integration_branch}",
            markup=False,
        )
        if not wait:
            return
        try:
            record = follow(store, run_id, proc, after=seen[-1][0] if seen else "0")
        except KeyboardInterrupt:
            interrupted(store, run_id)
        print_run(store, record)  # while connected: it reads the run's sandbox kinds
    passed = record.tasks[task].status is TaskStatus.passed
    raise typer.Exit(3 if record.status is RunStatus.error else 0 if passed else 1)
