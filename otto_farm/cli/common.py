"""What the commands share: option aliases, error handling, reaching the store, rendering."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import redis
import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from otto_farm import shell
from otto_farm.embedded import session
from otto_farm.errors import InputError, OttoFarmError
from otto_farm.models import FAILED_STATUSES, GateState, RunRecord, TaskState, TaskStatus
from otto_farm.settings import Settings
from otto_farm.store import Store

# soft_wrap: a long line stays one line when piped, so scripts can read it.
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)
UNBOUNDED = 1_000_000  # columns: a piped table's width is its own

RunId = Annotated[str, typer.Argument(help="Run id (see `otto-farm runs`).")]
LatestRunId = Annotated[
    str | None,
    typer.Argument(help="Run id (see `otto-farm runs`); default: the latest run.", show_default=False),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Workers = Annotated[
    int, typer.Option("--workers", "-w", min=1, help="Local worker processes (embedded default).")
]

F = TypeVar("F", bound=Callable[..., Any])
STATUS_STYLE = {
    TaskStatus.passed: "green",
    TaskStatus.failed: "red",
    TaskStatus.error: "red",
    TaskStatus.timeout: "red",
    TaskStatus.merge_conflict: "yellow",
    TaskStatus.skipped: "dim",
    TaskStatus.running: "cyan",
}


def exits_cleanly(fn: F) -> F:
    """Turn otto-farm errors into one line on stderr and their exit code (2 input, 3 infrastructure)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OttoFarmError as exc:
            err_console.print(f"otto-farm: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except (redis.RedisError, OSError) as exc:
            err_console.print(f"otto-farm: infrastructure error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def connected(workers: int = 0, jobs: bool = True) -> Iterator[tuple[Store, Any]]:
    """A store (and, for a command that sends `jobs`, a configured Celery app) on the configured broker
    or the embedded one. Without jobs Celery is not even imported: reading a run starts fast.

    Only a command that brings workers (submit) makes a farm: the others never create its state dir.
    """
    settings = Settings.load()
    if settings.embedded and not workers and not settings.home.is_dir():
        raise InputError(
            "OTTO_FARM_HOME", str(settings.home), "no farm here yet: `otto-farm up` or `submit` starts one"
        )
    with session(settings, workers) as (settings, proc):
        if jobs:
            from otto_farm import celery_app

            celery_app.configure(settings)
        store = Store.from_url(settings.resolved_store_url)
        store.ping()
        yield store, proc


def run_or_latest(store: Store, run_id: str | None) -> str:
    """The run named, or the most recently started one."""
    if run_id:
        return run_id
    latest = store.run_ids(1)
    if not latest:
        raise InputError("RUN", "", "no runs yet on this farm")
    return latest[0]


def short(sha: str | None) -> str:
    return sha[:10] if sha else "-"


TASK_HEADERS = ("task", "batch", "status", "attempts", "runs", "sha", "duration", "cost", "branch")
# On a terminal, the tasks that need a look come first when not all fit: running, failed, pending.
_FIRST = {TaskStatus.running: 0, **dict.fromkeys(FAILED_STATUSES, 1), TaskStatus.pending: 2}


def task_rows(record: RunRecord, keys: list[str] | None = None) -> list[tuple[str, ...]]:
    """A row per task (of `keys`, default every task), from its state and its last result."""
    added = {t.key for t in record.added_tasks}
    rows: list[tuple[str, ...]] = []
    for key in record.tasks if keys is None else keys:
        state = record.tasks[key]
        last = state.last
        rows.append(
            (
                f"{key} (pilot)" if key in added else key,
                "-" if state.batch is None else str(state.batch + 1),
                state.status.value,
                str(len(last.attempts)) if last else "-",
                str(state.runs),
                short(last.commit_sha if last else None),
                _duration(state),
                _cost(state),
                last.branch if last else "-",
            )
        )
    return rows


def fitting(statuses: list[str], room: int) -> tuple[list[int], str | None]:
    """Which of these tasks (by position) fit `room` rows, those that need a look first, in the run's
    order; and a line for the rest."""
    if len(statuses) <= room:
        return list(range(len(statuses))), None
    ranked = sorted(range(len(statuses)), key=lambda i: (_FIRST.get(TaskStatus(statuses[i]), 3), i))
    rest: dict[str, int] = {}
    for i in ranked[room:]:
        rest[statuses[i]] = rest.get(statuses[i], 0) + 1
    counts = ", ".join(f"{n:,} {status}" for status, n in sorted(rest.items()))
    more = f"... {len(ranked) - room:,} more tasks ({counts}): `status --all`, or a pipe, shows every one"
    return sorted(ranked[:room]), more


def task_table(record: RunRecord, rows: list[tuple[str, ...]] | None = None) -> Table:
    rows = task_rows(record) if rows is None else rows
    table = Table(title=f"run {record.run_id}", title_justify="left", box=box.SIMPLE_HEAD)
    for i, col in enumerate(TASK_HEADERS):
        # Every column keeps its width but the long branch, last, which narrow terminals fold.
        if col == "branch":
            table.add_column(col, overflow="fold", min_width=12)
        else:
            table.add_column(col, no_wrap=True, min_width=max(len(col), *(len(row[i]) for row in rows)))
    for row in rows:
        style = STATUS_STYLE.get(TaskStatus(row[2]), "")
        table.add_row(*row[:2], f"[{style}]{row[2]}[/]" if style else row[2], *row[3:])
    return table


def plain_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Every cell whole, columns two spaces apart: what a pipe gets, fast at any number of rows."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]
    ]
    return "\n".join(lines) + "\n"


def terminal_view(store: Store, record: RunRecord, everything: bool = False) -> list[Any]:
    """What a terminal shows of a run: the tasks that fit its height, why the failed ones did, totals.

    `record` may come without results (`Store.get(tasks=())`): only the shown tasks' are read, so a
    look at a 10,000-task run reads a screenful of results, not 10,000.
    """
    keys, more = list(record.tasks), None
    if not everything:
        shown, more = fitting([s.status.value for s in record.tasks.values()], max(console.height - 10, 10))
        keys = [keys[i] for i in shown]
    store.fill_results(record, [k for k in keys if record.tasks[k].runs and not record.tasks[k].results])
    causes = cause_lines(record)
    if not everything and len(causes) > 10:
        causes = [*causes[:10], f"  ... {len(causes) - 10:,} more failed or skipped"]
    rows = task_rows(record, keys)
    return [task_table(record, rows), *([more] if more else []), *causes, summary_line(store, record)]


def print_table(table: Table) -> None:
    """On a terminal, fit its width; piped or redirected, every cell whole at the table's own width."""
    if console.is_terminal:
        console.print(table, soft_wrap=False)
        return
    width = Measurement.get(console, console.options.update(max_width=UNBOUNDED), table).maximum
    Console(file=console.file, width=width, highlight=False).print(table, soft_wrap=False)


def print_run(store: Store, record: RunRecord, everything: bool = False) -> None:
    """A run's tasks, why those that failed did, and its summary: on a terminal what fits (all with
    `everything`), piped or redirected every task, as plain text (`record` with every result)."""
    if console.is_terminal:
        table, *lines = terminal_view(store, record, everything)
        console.print(table, soft_wrap=False)
        for line in lines:
            console.print(line, markup=False)
        return
    console.file.write(f"run {record.run_id}\n" + plain_table(TASK_HEADERS, task_rows(record)))
    for line in [*cause_lines(record), summary_line(store, record)]:
        console.print(line, markup=False)


def elapsed(seconds: float) -> str:
    """A time span as people read it: 42s, 3m05s, 1h02m."""
    s = max(int(seconds), 0)
    return (
        f"{s}s"
        if s < 60
        else f"{s // 60}m{s % 60:02d}s"
        if s < 3600
        else f"{s // 3600}h{s % 3600 // 60:02d}m"
    )


def _duration(state: TaskState) -> str:
    """Its last job's time, or how long its running job has run (the store fills `started_at`)."""
    if state.status is TaskStatus.running and state.started_at is not None:
        return f"{elapsed((datetime.now(UTC) - state.started_at).total_seconds())} so far"
    return f"{state.last.duration_s:.1f}s" if state.last else "-"


def _cost(state: TaskState) -> str:
    """Its runs' cost, and the time its calls waited for the fleet's API limits, if they did."""
    waited = sum(r.usage.limit_wait_s for r in state.results)
    wait = f" ({elapsed(waited)} waiting)" if waited >= 1 else ""
    return f"${sum(r.usage.cost_usd for r in state.results):.4f}{wait}"


def api_note(record: RunRecord) -> str:
    """The run's Messages API calls: how many and how fast, and what the fleet's limits cost them."""
    usage = record.usage
    if not usage.api_calls:
        return ""
    span_s = ((record.finished_at or datetime.now(UTC)) - record.created_at).total_seconds()
    parts = [f"{usage.api_calls} calls", f"{usage.api_calls * 60 / max(span_s, 1):.1f}/min"]
    if usage.limit_wait_s >= 1:
        parts.append(f"{elapsed(usage.limit_wait_s)} waiting for limits")
    parts += [f"{n}×{code}" for n, code in ((usage.rate_limited, 429), (usage.overloaded, 529)) if n]
    return "; API: " + ", ".join(parts)


def cause_lines(record: RunRecord) -> list[str]:
    """Why each task that failed or was skipped did: its code and the first line of its cause."""
    return [
        "  " + state_line(key, state)
        for key, state in record.tasks.items()
        if state.status in FAILED_STATUSES or state.status is TaskStatus.skipped
    ]


def state_line(key: str, state: TaskState) -> str:
    """A task's state in one line: where it runs, how long its job took, or why it failed."""
    if state.status is TaskStatus.running:
        return f"{key} running (run {state.runs}" + (
            f", batch {state.batch + 1})" if state.batch is not None else ")"
        )
    if state.status is TaskStatus.passed and state.last:
        return f"{key} passed in {elapsed(state.last.duration_s)}"
    code = f" ({state.error_code})" if state.error_code else ""
    cause = shell.first_line(state.reason)
    return f"{key} {state.status.value}{code}" + (f": {cause}" if cause else "")


def summary_line(store: Store, record: RunRecord) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(record.counts().items()))
    # The store's set, which results alone fill; a run stored before it was kept has only its results.
    kinds = store.sandboxes(record.run_id) or sorted(
        {r.sandbox for s in record.tasks.values() for r in s.results if r.sandbox}
    )
    return (
        f"run {record.run_id} {record.status.value}: {counts}; integration branch "
        f"{record.integration_branch} at {short(record.integration_sha)}; cost ${record.usage.cost_usd:.4f}"
        + (
            f"; green under the gate `{record.taskset.gate_command}`"
            if record.taskset.gate.enabled and record.integration_sha
            else ""
        )
        + "".join(f"; batch {b.index + 1}: {_gate_summary(b.gate)}" for b in record.batches if b.gate)
        + api_note(record)
        + (f"; sandbox {', '.join(kinds)}" if kinds else "")
        + ("; UNSANDBOXED: task commands ran as the worker's user" if "none" in kinds else "")
        + (f"; error: {record.error}" if record.error else "")
    )


def _gate_summary(state: GateState) -> str:
    """A batch's gate: its checks and their time, and the culprits it found."""
    seconds = sum(c.duration_s for c in state.checks)
    flaky = sum(c.flaky for c in state.checks)
    culprits = f", culprit {', '.join(state.culprits)}" if state.culprits else ""
    return (
        f"gate {len(state.checks)} check(s) in {seconds:.1f}s"
        + (f", {flaky} flaky" if flaky else "")
        + culprits
    )
