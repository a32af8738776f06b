"""`otto-farm status`: one run's tasks, once or live."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live

from otto_farm.cli.common import (
    JsonOut,
    RunId,
    connected,
    console,
    exits_cleanly,
    summary_line,
    task_table,
    write_json,
)
from otto_farm.models import RunStatus


@exits_cleanly
def status(
    run_id: RunId,
    json_out: JsonOut = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the run ends.")] = False,
) -> None:
    """Every task of a run: batch, status, attempts, runs, branch, sha, duration."""
    with connected() as (store, _):
        record = store.get(run_id)
        if json_out:
            write_json(record.model_dump_json(indent=2))
            return
        if not watch:
            console.print(task_table(record), soft_wrap=False)
            console.print(summary_line(record))
            return
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(Group(task_table(record), summary_line(record)), refresh=True)
                if record.status is not RunStatus.running:
                    return
                time.sleep(1)
                record = store.get(run_id)
