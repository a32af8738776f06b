"""`otto-farm runs`: the most recent runs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from otto_farm.cli.common import JsonOut, connected, exits_cleanly, print_table, short


@exits_cleanly
def runs(
    limit: Annotated[int, typer.Option(min=1, help="How many runs.")] = 20,
    json_out: JsonOut = False,
) -> None:
    """The most recent runs, newest first."""
    with connected(jobs=False) as (store, _):
        records = [store.get(run_id, tasks=()) for run_id in store.run_ids(limit)]
    if json_out:
        sys.stdout.write("[" + ",".join(r.model_dump_json() for r in records) + "]\n")
        return
    rows = [
        (
            r.run_id,
            r.name or "-",
            r.status.value,
            ", ".join(f"{n} {s}" for s, n in sorted(r.counts().items())),
            short(r.integration_sha),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for r in records
    ]
    table = Table(box=box.SIMPLE_HEAD)
    for i, col in enumerate(("run", "name", "status", "tasks", "integration sha", "created")):
        if col in ("name", "tasks"):  # a narrow terminal folds these; ids and times are never cut
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, no_wrap=True, min_width=max(len(col), *(len(row[i]) for row in rows)))
    for row in rows:
        table.add_row(*row)
    print_table(table)
