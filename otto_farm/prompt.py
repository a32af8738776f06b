"""The full prompt a coding agent gets: its task, plus what the run has learned for it."""

from __future__ import annotations

from otto_farm.models import TaskSet, TaskState, TaskStatus


def previous_run_failure(state: TaskState) -> str | None:
    """How the task's previous run failed, in its own words (verify output), for its next run."""
    last = state.last
    if last is None or last.status is TaskStatus.passed:
        return None
    head = f"Your previous run ended {last.status.value} ({last.error_code}): {last.error or 'no detail'}"
    return head + (f"\n{last.verify_tail}" if last.verify_tail else "")


def build(
    ts: TaskSet,
    state: TaskState,
    learnings: list[str],
    previous_failure: str | None = None,
    layout: str | None = None,
) -> str:
    """Task prompt, verify command, repo layout, learnings, routed context, retry guidance, previous failure.

    The retry guidance (from the replan or the pilot) sits in its own section beside, never instead
    of, the previous attempt's verify output: the agent reads its own error first-hand.
    """
    key = state.key
    parts = [
        ts.task(key).prompt.strip(),
        f"## Verify\nYour change must make this command pass: `{ts.verify_for(key)}`",
    ]
    if layout:
        parts.append("## Repository layout\n" + layout)
    if learnings:
        parts.append("## Learnings from earlier batches\n" + "\n".join(f"- {x}" for x in learnings))
    if state.context:
        parts.append("## Context for this task\n" + "\n".join(f"- {x}" for x in state.context))
    if state.guidance:
        parts.append("## Retry guidance\n" + state.guidance)
    if previous_failure:
        parts.append(
            "## Previous attempt failed\n"
            + previous_failure
            + "\n\nFix the specific failures above. Do not regress items that were passing."
        )
    return "\n\n".join(parts) + "\n"
