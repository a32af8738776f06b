"""`otto-farm submit`: validate a task set, start the run, follow it to the end."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from otto_farm import coordinator, gitops, llm, shell, taskset
from otto_farm.cli.common import (
    connected,
    console,
    elapsed,
    err_console,
    exits_cleanly,
    print_run,
)
from otto_farm.embedded import Embedded
from otto_farm.errors import InfrastructureError, InputError
from otto_farm.models import RunRecord, RunStatus, TaskSet
from otto_farm.plan import initial
from otto_farm.settings import Settings
from otto_farm.store import Store

EXIT_CODES = {
    RunStatus.passed: 0,
    RunStatus.failed: 1,
    RunStatus.budget_exceeded: 1,
    RunStatus.base_red: 1,
    RunStatus.cancelled: 1,
    RunStatus.error: 3,
}
DEFAULT_WORKERS = 2
PROGRESS_EVERY_S = 30.0  # with tasks running and nothing else to say, their elapsed times this often


@exits_cleanly
def submit(
    file: Annotated[Path, typer.Argument(help="Task set: YAML, or .txt with one prompt per line.")],
    repo: Annotated[str | None, typer.Option(help="Repository path or URL (overrides the file's).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the run to its end.")] = True,
    workers: Annotated[  # None: not given, so a farm already up is not told it was ignored
        int | None,
        typer.Option("--workers", "-w", min=1, help="Local worker processes (embedded default: 2)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan only.")] = False,
    no_pilot: Annotated[
        bool, typer.Option("--no-pilot", help="Decide after failures by replan alone.")
    ] = False,
    no_gate: Annotated[
        bool, typer.Option("--no-gate", help="Merge without checking the integration branch (gate).")
    ] = False,
) -> None:
    """Run a task set: batches of coding jobs, merged into an integration branch."""
    loaded = taskset.load(file, repo, agent_command=Settings.load().agent_command)
    if note := uncommitted_note(loaded):
        err_console.print(f"otto-farm: note: {note}", markup=False, soft_wrap=True)
    for off, part in ((no_pilot, "pilot"), (no_gate, "gate")):
        if off:
            ts = loaded.taskset
            config = getattr(ts, part).model_copy(update={"enabled": False})
            loaded = dataclasses.replace(loaded, taskset=ts.model_copy(update={part: config}))
    if dry_run:
        ts = loaded.taskset
        plan = initial(ts)
        console.print(
            f"{file}: {len(ts.tasks)} tasks in {len(plan)} batches on {loaded.repo} ({loaded.base})"
        )
        for i, batch in enumerate(plan, 1):
            console.print(f"  batch {i}: {', '.join(batch)}")
        return
    run(loaded, wait, workers or DEFAULT_WORKERS, workers_given=workers is not None)


def run(
    loaded: taskset.LoadedTaskSet, wait: bool = True, workers: int = 2, workers_given: bool = False
) -> None:
    """Start a run of a loaded task set and, with `wait`, follow it and exit with its outcome's code."""
    if not wait and not lasting():  # a farm started for this command would stop as it returns
        raise InputError("--no-wait", "", "needs a running farm: start one with `otto-farm up`")
    with connected(workers) as (store, proc):
        record = coordinator.start(store, loaded)
        console.print(f"run {record.run_id}: {len(record.tasks)} tasks on {loaded.repo} ({loaded.base})")
        if note := pilot_note(loaded.taskset, own_workers=proc is not None):
            console.print(note, markup=False)
        if workers_given and proc is None:  # the farm's workers were there before this command
            err_console.print(
                f"otto-farm: note: --workers {workers} not applied: {_not_ours()}", soft_wrap=True
            )
        if not wait:
            return
        try:
            record = follow(store, record.run_id, proc)
        except KeyboardInterrupt:
            interrupted(store, record.run_id)
        print_run(store, record)  # while connected: it reads the run's sandbox kinds
    raise typer.Exit(EXIT_CODES[record.status])


def _not_ours() -> str:
    if Settings.load().embedded:
        return "the farm's workers are already up (`otto-farm down`, then `otto-farm up --workers N`)"
    return "a configured broker's workers are started with `otto-farm worker`"


def uncommitted_note(loaded: taskset.LoadedTaskSet) -> str | None:
    """A local repository's uncommitted changes: the agents work from commits, and never see them."""
    if gitops.is_url(loaded.repo):
        return None
    changed = gitops.git(["status", "--porcelain"], cwd=Path(loaded.repo), check=False).splitlines()
    if not changed:
        return None
    return (
        f"{loaded.repo} has {len(changed)} uncommitted change(s); the agents see only its committed "
        f"{loaded.base} ({loaded.base_sha[:10]})"
    )


def pilot_note(ts: TaskSet, own_workers: bool) -> str | None:
    """What the pilot will do, said once before the run's first batch: off, or keyless on workers this
    command started (they have its environment; other farms' workers have their own)."""
    if not ts.pilot.enabled:
        return "pilot: off; after a failed batch the replan decides (failed tasks with runs left run again)"
    if own_workers and not llm.has_key(os.environ):
        return (
            "pilot: no ANTHROPIC_API_KEY on this farm; after a failed batch it falls back to the replan "
            "(set the key, or --no-pilot to say so)"
        )
    return None


def lasting() -> bool:
    """Whether the farm outlives this command: a configured broker's, or one `otto-farm up` keeps."""
    settings = Settings.load()
    return not settings.embedded or Embedded(settings).kept_up()


def interrupted(store: Store, run_id: str) -> NoReturn:
    """Ctrl-C while following a run: on a farm that outlives this command the run goes on; on one
    that stops with it, the run could only wait forever, so it is cancelled."""
    if lasting():
        err_console.print(
            f"otto-farm: interrupted; run {run_id} goes on: `otto-farm status {run_id}` follows it, "
            f"`otto-farm cancel {run_id}` stops it",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(130)
    signal.signal(signal.SIGINT, _exit_now)  # cancelling and stopping the farm may take a while
    err_console.print(
        f"otto-farm: interrupted; cancelling run {run_id} (Ctrl-C again to exit now)", soft_wrap=True
    )
    with contextlib.suppress(InputError):  # it ended meanwhile
        coordinator.cancel(store, run_id)
    raise typer.Exit(130)


def _exit_now(signum: int, frame: object) -> None:
    """A second Ctrl-C: exit at once; what is left of the farm stops with its next client or `down`."""
    os.write(2, b"otto-farm: exiting now; `otto-farm down` stops what is left of the farm\n")
    os._exit(130)


def follow(store: Store, run_id: str, workers: object | None = None, after: str = "0") -> RunRecord:
    """Print the run's events after the id `after` as they come until it ends."""
    last_id = after
    started: dict[str, float] = {}  # running tasks, when this command saw them start
    said = time.monotonic()
    while True:
        for last_id, event in store.events(run_id, last_id, block_ms=1000):  # noqa: B007,B020 - resumes after it
            if event["kind"] == "task_started":
                started[event["task"]] = time.monotonic()
            elif event["kind"] == "task_finished":
                started.pop(event["task"], None)
            if line := render_event(event):
                console.print(line, markup=False)
                said = time.monotonic()
            if event["kind"] == "run_finished":
                return store.get(run_id)
        if started and time.monotonic() - said >= PROGRESS_EVERY_S:
            console.print(running_line(started, time.monotonic()), markup=False)
            said = time.monotonic()
        if workers is not None and workers.poll() is not None:  # type: ignore[attr-defined]
            raise InfrastructureError("the local worker process exited; see .otto-farm/worker.log")


def running_line(started: dict[str, float], now: float) -> str:
    """The running tasks and how long each has run, longest first."""
    tasks = sorted(started.items(), key=lambda kv: kv[1])
    return "  .. running: " + ", ".join(f"{key} {elapsed(now - at)}" for key, at in tasks)


def render_event(e: dict[str, str]) -> str | None:
    kind, task = e["kind"], e.get("task", "")
    if kind == "batch_started":
        return f"batch {int(e['batch']) + 1}: {e['tasks'].replace(',', ', ')}"
    if kind == "task_started":
        return f"  > {task} started (run {e['run']}) on {e.get('worker', '?')}"
    if kind == "task_finished":
        mark = "ok" if e["status"] == "passed" else "!!"
        why = f" ({e['error']})" if e.get("error") else ""
        took = f" in {elapsed(float(e['duration_s']))}" if e.get("duration_s") else ""
        cause = f": {e['cause']}" if e.get("cause") else ""
        if e["status"] == "passed" and not e.get("commit"):
            cause = "; no changes"  # passed without touching the tree: nothing of it will merge
        return f"  {mark} {task} {e['status']}{why} after {e['attempts']} attempt(s){took}{cause}"
    if kind == "batch_merged":
        merged = f"merged [{e['merged']}]" if e.get("merged") else "merged nothing"
        line = f"  {merged} -> {e['sha'][:10]}"
        return line + (f"; conflicts: {e['conflicts']}" if e.get("conflicts") else "")
    if kind == "decision":
        parts = [
            f"retry {e['retry']}" if e.get("retry") else "",
            f"skip {e['skip']}" if e.get("skip") else "",
        ]
        return f"  {e['source']}: " + "; ".join(p for p in parts if p) if any(parts) else None
    if kind == "pilot_started":
        return f"  pilot: deciding after batch {int(e['batch']) + 1}"
    if kind == "pilot_decided":
        cost = f"${float(e.get('cost_usd', 0)):.4f}"
        if e["outcome"] == "fallback_replan":  # the pilot's answer was not used: say why, in one line
            return f"  pilot: fell back to the replan: {shell.first_line(e.get('reason'))} ({cost})"
        why = f" ({e['reason']})" if e.get("reason") else ""
        return f"  pilot: {e['outcome']}{why}, {cost}"
    if kind == "gate_started":
        where = "the base" if e["batch"] == "-1" else f"batch {int(e['batch']) + 1}"
        return f"  gate: checking {where}" + (f" ({e['checks']} prefixes)" if int(e["checks"]) > 1 else "")
    if kind in ("gate_passed", "gate_failed", "gate_flaky"):
        verdict = kind.removeprefix("gate_")
        return f"  gate: {e['label']} {e['sha'][:10]} {verdict} in {float(e['duration_s']):.1f}s"
    if kind == "run_finished":
        return f"run {e['status']}" + (f": {e['error']}" if e.get("error") else "")
    return None
