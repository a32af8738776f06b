"""`otto-farm runs`: the most recent runs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from otto_farm.cli.common import JsonOut, connected, console, exits_cleanly, short, write_json


@exits_cleanly
def runs(
    limit: Annotated[int, typer.Option(min=1, help="How many runs.")] = 20,
    json_out: JsonOut = False,
) -> None:
    """The most recent runs, newest first."""
    with connected() as (store, _):
        records = [store.get(run_id, tasks=()) for run_id in store.run_ids(limit)]
    if json_out:
        write_json("[" + ",".join(r.model_dump_json() for r in records) + "]")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("run", "name", "status", "tasks", "integration sha", "created"):
        table.add_column(col, no_wrap=col == "run")
    for r in records:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(r.counts().items()))
        table.add_row(
            r.run_id,
            r.name or "-",
            r.status.value,
            counts,
            short(r.integration_sha),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table, soft_wrap=False)
