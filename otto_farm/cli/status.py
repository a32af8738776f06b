"""`otto-farm status`: one run's tasks, once or live."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live

from otto_farm import runparts
from otto_farm.cli.common import (
    JsonOut,
    LatestRunId,
    connected,
    console,
    exits_cleanly,
    print_run,
    run_or_latest,
    state_line,
    terminal_view,
    write_json,
)
from otto_farm.models import RunRecord, RunStatus
from otto_farm.store import Store


@exits_cleanly
def status(
    run_id: LatestRunId = None,
    json_out: JsonOut = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the run ends.")] = False,
    pilot: Annotated[bool, typer.Option("--pilot", help="Show the pilot's decisions.")] = False,
    everything: Annotated[
        bool, typer.Option("--all", help="On a terminal, every task, not the ones that fit its height.")
    ] = False,
) -> None:
    """Every task of a run (default: the latest): batch, status, attempts, runs, branch, sha, duration."""
    # A terminal shows what fits: the task states, and the results of the shown tasks alone; looking
    # again, it parses only the states that changed (`seen`).
    lean = console.is_terminal and not (json_out or pilot or everything)
    seen = runparts.Seen() if lean else None
    with connected(jobs=False) as (store, _):
        record = store.get(run_or_latest(store, run_id), tasks=() if lean else None, seen=seen)
        if json_out:
            write_json(record.model_dump_json(indent=2))
            return
        if pilot:
            print_pilot(record)
            return
        if watch and not console.is_terminal:  # piped or redirected: a line per change, then the whole
            record = watch_lines(store, record)
        if not watch or not console.is_terminal:
            print_run(store, record, everything)
            return
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(Group(*terminal_view(store, record, everything)), refresh=True)
                if record.status is not RunStatus.running:
                    return
                time.sleep(1)
                record = store.get(record.run_id, tasks=() if lean else None, seen=seen)


def watch_lines(store: Store, record: RunRecord) -> RunRecord:
    """A timed line for each task whose state changes, until the run ends; the ended run."""
    seen: dict[str, str] = {}
    while True:
        for key, state in record.tasks.items():
            if seen.get(key) != (line := state_line(key, state)):
                seen[key] = line
                console.print(f"{datetime.now():%H:%M:%S} {line}", markup=False)
        if record.status is not RunStatus.running:
            return record
        time.sleep(1)
        record = store.get(record.run_id)


def print_pilot(record: RunRecord) -> None:
    """Each pilot decision: its outcome and why, cost, and what it changed."""
    entries = [b.pilot for b in record.batches if b.pilot is not None]
    if not entries:
        console.print(f"run {record.run_id}: no pilot decision (none needed, or the pilot is off)")
    for e in entries:
        console.print(
            f"after batch {e.batch + 1}: {e.outcome}"
            + (f" ({e.reason})" if e.reason else "")
            + f"; {e.model}, {e.duration_s:.1f}s, ${e.usage.cost_usd:.4f}",
            markup=False,
        )
        d = e.applied
        if d is None:
            continue
        for key, guidance in d.retry.items():
            console.print(f"  retry {key}: {guidance.splitlines()[0] if guidance else ''}", markup=False)
        for key, reason in d.skip.items():
            console.print(f"  skip {key}: {reason}", markup=False)
        for key, contexts in d.routed.items():
            console.print(f"  context for {key}: {' | '.join(contexts)}", markup=False)
        for text in d.learnings:
            console.print(f"  learning: {text}", markup=False)
        for task in d.new_tasks:
            after = ", ".join(task.depends_on) or "nothing"
            line = f"  new task {task.key} (after {after}): {task.prompt.splitlines()[0]}"
            console.print(line, markup=False)
        later = f" (then {d.later_batches} more)" if d.later_batches else ""
        console.print(
            f"  batches: {' / '.join(', '.join(b) for b in d.batches) or 'none'}{later}", markup=False
        )
