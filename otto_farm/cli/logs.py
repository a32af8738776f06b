"""`otto-farm logs`: what a task's agent and verify command printed, attempt by attempt."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from otto_farm.cli.common import RunId, connected, console, exits_cleanly
from otto_farm.errors import InputError


@exits_cleanly
def logs(
    run_id: RunId,
    task: Annotated[str, typer.Argument(help="Task key.")],
    attempt: Annotated[int | None, typer.Option(help="Only this attempt (of every run).")] = None,
) -> None:
    """Agent output and verify output of every attempt of one task."""
    with connected() as (store, _):
        record = store.get(run_id, tasks=())
        state = record.tasks.get(task)
        if state is None:
            raise InputError("task", task, f"not in run {run_id}")
        store.fill_results(record, [task])
        transcripts = {
            (r.run_no, a.number): store.transcript(run_id, task, r.run_no, a.number)
            for r in state.results
            for a in r.attempts
            if attempt is None or a.number == attempt
        }
    if not state.results:
        console.print(f"{task}: {state.status.value}, no job has finished yet")
    for result in state.results:
        console.rule(f"{task} run {result.run_no} (batch {result.batch + 1}): {result.status.value}")
        if result.error:
            console.print(f"error: {result.error}", markup=False)
        for a in result.attempts:
            if attempt is not None and a.number != attempt:
                continue
            exit_code = "" if a.agent_exit_code is None else f", exit {a.agent_exit_code}"
            cost = f", {a.usage.input_tokens}+{a.usage.output_tokens} tokens, ${a.usage.cost_usd:.4f}"
            console.print(
                f"--- attempt {a.number}: agent stopped: {a.stop_reason}{exit_code}{cost}", markup=False
            )
            transcript = transcripts[(result.run_no, a.number)]
            for entry in transcript:
                console.print(transcript_line(entry), markup=False)
            if not transcript:
                console.print(a.agent_output or "(no agent output)", markup=False)
            if a.verify_exit_code is not None:
                console.print(f"--- attempt {a.number}: verify exit {a.verify_exit_code}", markup=False)
                console.print(a.verify_output or "(no verify output)", markup=False)


def transcript_line(entry: dict[str, Any]) -> str:
    """One transcript entry: the model's text, a tool call, or a tool's answer."""
    if entry["role"] == "tool":
        mark = "tool error" if entry.get("is_error") else "tool"
        return f"[{mark} {entry['tool']}] {entry['output']}"
    if "tool" in entry:
        return f"[call {entry['tool']}] {entry['input']}"
    return f"[assistant] {entry.get('text', '')}"
