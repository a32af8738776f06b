"""`otto-farm status`: one run's tasks, once or live."""

from __future__ import annotations

import json
import sys
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
)
from otto_farm.models import RunRecord, RunStatus, TaskState, TaskStatus
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
    lean = console.is_terminal and not (pilot or everything)
    seen = runparts.Seen() if lean else None
    with connected(jobs=False) as (store, _):
        run = run_or_latest(store, run_id)
        if json_out:
            write_run_json(store, store.get(run, tasks=()))
            return
        if watch and not console.is_terminal:  # piped or redirected: a line per change, then the whole
            print_run(store, watch_lines(store, run), everything)
            return
        record = store.get(run, tasks=() if lean else None, seen=seen)
        if pilot:
            print_pilot(record)
            return
        if not watch:
            print_run(store, record, everything)
            return
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(Group(*terminal_view(store, record, everything)), refresh=True)
                if record.status is not RunStatus.running:
                    return
                time.sleep(1)
                record = store.get(record.run_id, tasks=() if lean else None, seen=seen)


def watch_lines(store: Store, run_id: str) -> RunRecord:
    """A timed line for each task whose state changes, until the run ends; the ended run, with every
    task's results."""
    printed: dict[str, str] = {}
    states, looked = runparts.Seen(), dict[str, TaskState]()
    while True:
        record = look(store, run_id, states, looked)
        for key, state in record.tasks.items():
            if printed.get(key) != (line := state_line(key, state)):
                printed[key] = line
                console.print(f"{datetime.now():%H:%M:%S} {line}", markup=False)
        if record.status is not RunStatus.running:
            return record
        time.sleep(1)


def look(store: Store, run_id: str, states: runparts.Seen, looked: dict[str, TaskState]) -> RunRecord:
    """The run, parsing only the task states that changed since the last look (`states`) and reading
    the results of those alone, and of the running tasks (whose job may have ended): a look at a
    10,000-task run costs what changed, so `--watch` can be left running. `looked`: what the last look
    returned, by task."""
    record = store.get(run_id, tasks=(), seen=states)
    fresh = [k for k, s in record.tasks.items() if looked.get(k) is not s or s.status is TaskStatus.running]
    for key in fresh:
        record.tasks[key].results = []
    store.fill_results(record, fresh)
    looked.clear()
    looked.update(record.tasks)
    return record


PAGE = 500  # tasks whose results `--json` reads, writes and lets go at a time


def write_run_json(store: Store, record: RunRecord, page: int = PAGE) -> None:
    """The run as one JSON document (RunRecord's), its tasks written a page at a time with their
    results: at 10,000 tasks it never holds more than a page's results or builds the whole text."""
    out = sys.stdout
    fields = record.model_dump(mode="json", exclude={"tasks"})
    keys = list(record.tasks)
    out.write("{")
    for i, name in enumerate(RunRecord.model_fields):
        out.write(("," if i else "") + f"\n  {json.dumps(name)}: ")
        if name != "tasks":
            out.write(json.dumps(fields[name], indent=2, ensure_ascii=False).replace("\n", "\n  "))
            continue
        out.write("{")
        for start in range(0, len(keys), page):
            chunk = keys[start : start + page]
            store.fill_results(record, chunk)
            for j, key in enumerate(chunk):
                state = record.tasks[key]
                text = state.model_dump_json(indent=2).replace("\n", "\n    ")
                out.write(("," if start + j else "") + f"\n    {json.dumps(key)}: {text}")
                state.results = []
        out.write("\n  }" if keys else "}")
    out.write("\n}\n")


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
