"""`otto-farm logs`: what a task's agent and verify command printed, attempt by attempt; with -f, as its
running job prints it (livelog.py: through Redis, so from any machine)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from otto_farm import livelog
from otto_farm.cli.common import connected, console, exits_cleanly, run_or_latest
from otto_farm.errors import InputError
from otto_farm.livelog import LiveChunk
from otto_farm.models import Attempt, RunStatus, TaskStatus
from otto_farm.store import Store

FOLLOW_BLOCK_MS = 1000  # between looks at whether the job has ended


@exits_cleanly
def logs(
    run_task: Annotated[
        list[str],
        typer.Argument(
            metavar="[RUN] TASK", help="The run (default: the latest) and the task's key.", show_default=False
        ),
    ],
    attempt: Annotated[int | None, typer.Option(help="Only this attempt (of every run).")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow its running job's output until the job ends.")
    ] = False,
) -> None:
    """Agent output and verify output of every attempt of one task."""
    if len(run_task) > 2:
        raise InputError("logs", " ".join(run_task), "takes a run and a task, or a task of the latest run")
    *named, task = run_task
    with connected(jobs=False) as (store, _):
        run_id = run_or_latest(store, named[0] if named else None)
        record = store.get(run_id, tasks=())
        state = record.tasks.get(task)
        if state is None:
            raise InputError("task", task, f"not in run {run_id}")
        store.fill_results(record, [task])
        if follow and _active(record.status, state.status):
            try:
                followed = _follow(store, run_id, task)
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
            record = store.get(run_id, tasks=())
            store.fill_results(record, [task])
            for result in record.tasks[task].results:
                if result.run_no in followed:  # its output was shown as it came: its outcome only
                    console.rule(
                        f"{task} run {result.run_no} (batch {result.batch + 1}): {result.status.value}"
                    )
                    if result.error:
                        console.print(f"error: {result.error}", markup=False)
            return
        transcripts = {
            (r.run_no, a.number): store.transcript(run_id, task, r.run_no, a.number)
            for r in state.results
            for a in r.attempts
            if attempt is None or a.number == attempt
        }
    if not state.results:
        console.print(f"{task}: {state.status.value}, no job has finished yet")
    numbers = sorted({a.number for r in state.results for a in r.attempts})
    if attempt is not None and state.results and attempt not in numbers:
        raise InputError(
            "--attempt", str(attempt), f"{task} has attempt(s) {', '.join(map(str, numbers)) or 'none'}"
        )
    for result in state.results:
        console.rule(f"{task} run {result.run_no} (batch {result.batch + 1}): {result.status.value}")
        if result.error:
            console.print(f"error: {result.error}", markup=False)
        for a in result.attempts:
            if attempt is not None and a.number != attempt:
                continue
            cost = f", {a.usage.input_tokens}+{a.usage.output_tokens} tokens, ${a.usage.cost_usd:.4f}"
            console.print(f"--- attempt {a.number}: {_ended(a)}{cost}", markup=False)
            transcript = transcripts[(result.run_no, a.number)]
            for entry in transcript:
                console.print(transcript_line(entry), markup=False)
            if not transcript:
                console.print(a.agent_output or "(no agent output)", markup=False)
            if a.verify_exit_code is not None:
                console.print(f"--- attempt {a.number}: verify exit {a.verify_exit_code}", markup=False)
                console.print(a.verify_output or "(no verify output)", markup=False)


def _ended(a: Attempt) -> str:
    """How the attempt's agent ended: a command exits with a code, a model's loop stops for a reason."""
    if a.stop_reason in ("exited", "error") and a.agent_exit_code is not None:
        return f"agent exited {a.agent_exit_code}"
    exit_code = "" if a.agent_exit_code is None else f", exit {a.agent_exit_code}"
    return f"agent stopped: {a.stop_reason}{exit_code}"


def _active(run: RunStatus, task: TaskStatus) -> bool:
    """Whether the task has a job running, or may get one: something to follow."""
    return task is TaskStatus.running or (task is TaskStatus.pending and run is RunStatus.running)


def _follow(store: Store, run_id: str, task: str) -> set[int]:
    """Print the task's live output as it comes until no job of it runs or is to come; the runs shown."""
    after, shown, ended = "0", set(), False
    last: tuple[int, str, int] | None = None
    at_line_start = True
    while True:
        # Looked at before the read: once ended, this read has all its job's output (sent before its result).
        record = store.get(run_id, tasks=())
        store.fill_results(record, [task])
        ended = not _active(record.status, record.tasks[task].status)
        after, chunks = livelog.read(store, run_id, task, after, block_ms=None if ended else FOLLOW_BLOCK_MS)
        for chunk in chunks:
            if (chunk.run, chunk.source, chunk.attempt) != last:
                last = (chunk.run, chunk.source, chunk.attempt)
                console.print(("" if at_line_start else "\n") + _header(task, chunk), markup=False)
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            at_line_start = chunk.text.endswith("\n")
            shown.add(chunk.run)
        if ended:
            if not at_line_start:
                sys.stdout.write("\n")
            return shown


def _header(task: str, chunk: LiveChunk) -> str:
    what = chunk.source if chunk.source == "setup" else f"attempt {chunk.attempt}: {chunk.source}"
    return f"--- {task} run {chunk.run}, {what} (live)"


def transcript_line(entry: dict[str, Any]) -> str:
    """One transcript entry: the model's text, a tool call, or a tool's answer."""
    if entry["role"] == "tool":
        mark = "tool error" if entry.get("is_error") else "tool"
        return f"[{mark} {entry['tool']}] {entry['output']}"
    if "tool" in entry:
        return f"[call {entry['tool']}] {entry['input']}"
    return f"[assistant] {entry.get('text', '')}"
