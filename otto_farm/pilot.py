"""The pilot: at a batch boundary with failures, an LLM's validated JSON decides the next chord.

`ask` builds the context from the run record and makes one forced tool call; `to_decision` checks the
answer against the run and turns it into a Decision, or falls back to the deterministic replan.
"""

from __future__ import annotations

import json
import os
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from otto_farm import pricing, runparts, shell
from otto_farm.errors import InputError
from otto_farm.llm import MAX_ANSWER_CHARS, NO_KEY, SDK_NO_KEY, LLMClient, has_key
from otto_farm.meter import CallFailed
from otto_farm.models import (
    FAILED_STATUSES,
    Decision,
    PilotAnswer,
    PilotRecord,
    RunRecord,
    TaskKey,
    TaskSpec,
    TaskStatus,
    with_tasks,
)
from otto_farm.plan import default_retries, replan, settle
from otto_farm.taskset import check_tasks

TOOL_NAME = "decide_next_batches"
MAX_NEW_TASKS = 3  # per decision: fixes for what a batch revealed, not a second plan
MAX_KEYS = 10_000  # task keys one list of the answer may name: a run's size, not a model's
SYSTEM = (
    "You are the pilot of a farm of coding agents working on one git repository. A batch of tasks has "
    "just ended with failures. Read what happened, explain each failure, choose per failed task whether "
    "to retry it, retry it differently (with concrete guidance for its agent) or skip it, route what "
    "passed tasks revealed to the upcoming tasks that need it, record learnings every later task should "
    "know, add a fix task (at most 3) where a failure needs work no task does, and order the remaining "
    "work into batches. Answer only by calling the tool."
)


# Every string and list of an answer is bounded in the tool's schema and in its validation.
Key = Annotated[str, StringConstraints(max_length=64)]  # checked against the run's keys in _checked
Line = Annotated[str, StringConstraints(max_length=1000)]  # a reason, a learning
Explanation = Annotated[str, StringConstraints(max_length=2000)]
Guidance = Annotated[str, StringConstraints(max_length=4000)]  # for an agent: guidance, routed context


class FailureAnalysis(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: Literal[
        "environment", "code_bug", "spec_ambiguity", "infrastructure", "dependency", "merge_conflict"
    ]
    explanation: Explanation


class RetryStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["retry", "retry_different", "skip"]
    guidance: Guidance | None = None
    reason: Line

    @model_validator(mode="after")
    def _guidance_for_retry_different(self) -> RetryStrategy:
        if self.action == "retry_different" and not (self.guidance or "").strip():
            raise ValueError("retry_different needs guidance")
        return self


class RoutedContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_task: Key
    context: Guidance


class NewTask(BaseModel):
    """A fix task the pilot adds; it runs with the task set's agent and sandbox."""

    model_config = ConfigDict(extra="forbid")
    key: TaskKey  # its pattern bounds the length too
    prompt: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8000)]
    depends_on: list[TaskKey] = Field(default_factory=list, max_length=32)
    verify: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None  # None: the set's


class PilotDecision(BaseModel):
    """The pilot's answer: the tool's input_schema is this model's JSON schema."""

    model_config = ConfigDict(extra="forbid")
    failure_analysis: dict[Key, FailureAnalysis] = Field(default_factory=dict, max_length=MAX_KEYS)
    retry_strategies: dict[Key, RetryStrategy] = Field(default_factory=dict, max_length=MAX_KEYS)
    routed_context: list[RoutedContext] = Field(default_factory=list, max_length=100)
    skip_tasks: list[Key] = Field(default_factory=list, max_length=MAX_KEYS)
    new_learnings: list[Line] = Field(default_factory=list, max_length=20)
    new_tasks: list[NewTask] = Field(default_factory=list, max_length=MAX_NEW_TASKS)
    batches: list[Annotated[list[Key], Field(max_length=MAX_KEYS)]] = Field(
        default_factory=list, max_length=MAX_KEYS
    )


def job_id(run_id: str, index: int) -> str:
    """The pilot job's Celery task id and lease name, after batch `index`."""
    return f"{run_id}.b{index}.pilot"


def apply_id(run_id: str, index: int) -> str:
    """The Celery task id of the step that applies the pilot's answer after batch `index`."""
    return f"{run_id}.b{index}.apply"


def needed(record: RunRecord, index: int) -> bool:
    """A pilot call only after a batch with a failure, while work remains, when the pilot is enabled.

    Not once the budget is spent: the run ends there, so the answer would be paid for and unused.
    """
    ts = record.taskset
    if not ts.pilot.enabled:
        return False
    if ts.budget.max_cost_usd is not None and record.usage.cost_usd >= ts.budget.max_cost_usd:
        return False
    if not any(record.tasks[k].status in FAILED_STATUSES for k in record.batches[index].tasks):
        return False
    pending = any(s.status is TaskStatus.pending for s in runparts.whole(record).tasks.values())
    return pending or bool(default_retries(record))


def context(record: RunRecord, index: int) -> str:
    """What the pilot reads, from the run record alone, within `pilot.max_context_chars`.

    Long parts (verify output, agent output, prompts) are cut first, keeping their ends where errors
    are; the key lists the answer may use always survive.
    """
    limit = record.taskset.pilot.max_context_chars
    keys = _key_lists(record)
    for part_chars in (4000, 2000, 1000, 500, 200, 80):
        text = _render(record, index, part_chars) + keys
        if len(text) <= limit:
            return text
    return shell.tail(_render(record, index, 80), max(limit - len(keys), 0)) + keys


def _render(record: RunRecord, index: int, n: int) -> str:
    ts = record.taskset
    out = [f"# Run {record.run_id}: batch {index + 1} of the plan has ended\n"]
    batch = record.batches[index]
    failed = [k for k in batch.tasks if record.tasks[k].status in FAILED_STATUSES]
    passed = [k for k in batch.tasks if record.tasks[k].status is TaskStatus.passed]
    out.append("## Failed tasks")
    for key in failed:
        state, last = record.tasks[key], record.tasks[key].last
        out.append(f"### {key}: {state.status.value} (runs used {state.runs} of {ts.max_task_runs})")
        out.append(f"Prompt: {shell.tail(ts.task(key).prompt, n)}")
        out.append(f"Error: {state.reason or (last.error if last else None) or '-'}")
        if last:
            out.append(f"Error code: {last.error_code or '-'}")
            agent_output = last.attempts[-1].agent_output if last.attempts else ""
            out.append(f"Agent's final output:\n{shell.tail(agent_output, n)}")
            out.append(f"Diff stat:\n{shell.tail(last.diff_stat, n) or '(no changes)'}")
            out.append(f"Verify output (end):\n{shell.tail(last.verify_tail, n) or '-'}")
    out.append("\n## Passed tasks")
    for key in passed:
        last = record.tasks[key].last
        summary = last.attempts[-1].agent_output if last and last.attempts else ""
        out.append(f"### {key}\nSummary: {shell.tail(summary, n // 2) or '-'}")
        out.append(f"Diff stat:\n{shell.tail(last.diff_stat if last else '', n // 2) or '(no changes)'}")
    out.append("\n## Learnings so far")
    out.extend(f"- {x}" for x in record.learnings or ["(none)"])
    out.append("\n## Upcoming tasks")
    added = {t.key for t in record.added_tasks}
    for key, state in record.tasks.items():
        if state.status is TaskStatus.pending:
            deps = ", ".join(ts.task(key).depends_on) or "none"
            by = ", added by the pilot" if key in added else ""
            out.append(f"### {key} (depends on: {deps}{by})\n{shell.tail(ts.task(key).prompt, n)}")
    return "\n".join(out) + "\n"


def _key_lists(record: RunRecord) -> str:
    retryable = sorted(default_retries(record))
    lost = sorted(k for k, s in record.tasks.items() if s.status in FAILED_STATUSES and k not in retryable)
    pending = sorted(k for k, s in record.tasks.items() if s.status is TaskStatus.pending)
    return (
        "\n## Keys your answer may use\n"
        f"- failed, with runs left (retry, retry_different or skip): {', '.join(retryable) or 'none'}\n"
        f"- failed for good (skip only): {', '.join(lost) or 'none'}\n"
        f"- still to run (routed_context targets, skip_tasks): {', '.join(pending) or 'none'}\n"
        f"- new_tasks: at most {MAX_NEW_TASKS} fix tasks, each with a key of its own (taken: "
        f"{', '.join(record.tasks)}), a prompt, depends_on (keys of the run or of other new tasks) and "
        "optionally a verify command (default: the task set's). They run with the task set's agent.\n"
        "- batches: exactly the tasks still to run plus those you retry and those you add, minus those you "
        f"skip, each once, a task after the ones it depends on, at most {record.taskset.max_batch_size} "
        "per batch.\n"
    )


def model_for(record: RunRecord) -> str:
    ts = record.taskset
    return ts.pilot.model or ts.agent.model or pricing.default_model()


def ask(record: RunRecord, index: int, client: LLMClient) -> PilotAnswer:
    """One forced tool call; any failure is kept in the answer, never raised."""
    start = time.monotonic()
    model = model_for(record)
    tool = {
        "name": TOOL_NAME,
        "description": "Decide the next batches.",
        "input_schema": PilotDecision.model_json_schema(),
    }
    answer = PilotAnswer(batch=index, model=model)
    try:
        reply = client.call(
            model=model,
            system=SYSTEM,
            prompt=context(record, index),
            tool=tool,
            timeout_s=record.taskset.pilot.timeout_s,
        )
        answer.usage = reply.usage
        raw = json.dumps(reply.tool_input) if reply.tool_input is not None else reply.text
        answer.raw = raw[:MAX_ANSWER_CHARS]
        if len(raw) > MAX_ANSWER_CHARS:
            answer.error = f"an answer of {len(raw):,} characters, over the {MAX_ANSWER_CHARS:,} bound"
        elif reply.tool_input is None:
            answer.error = f"no {TOOL_NAME} call in the answer"
    except CallFailed as exc:  # out of time or budget, or refused: what waiting cost is still counted
        answer.usage, answer.error = exc.usage, shell.tail(str(exc), 2000)
    except Exception as exc:  # anything else: never fatal
        answer.error = shell.tail(f"{type(exc).__name__}: {exc}", 2000)
    if answer.error and SDK_NO_KEY in answer.error and not has_key(os.environ):
        answer.error = NO_KEY
    answer.duration_s = round(time.monotonic() - start, 3)
    return answer


def to_decision(record: RunRecord, answer: PilotAnswer) -> tuple[Decision, PilotRecord]:
    """Check the answer against the run; apply it, or all but its batches, or fall back to the replan."""
    entry = PilotRecord(**answer.model_dump())
    try:
        if answer.error:
            raise ValueError(answer.error)
        decision, problem = _checked(record, PilotDecision.model_validate_json(answer.raw))
    except ValueError as exc:  # pydantic's ValidationError included: unparsable or schema-invalid
        decision = replan(record)
        entry.outcome, entry.reason = "fallback_replan", shell.tail(str(exc), 2000)
    else:
        entry.outcome, entry.reason = ("default_batches", problem) if problem else ("applied", None)
    entry.applied = decision
    return decision, entry


def _checked(record: RunRecord, answer: PilotDecision) -> tuple[Decision, str | None]:
    """The decision the answer asks for, and what was wrong with its batches (then the default ones stand).

    Any other rule broken raises ValueError: the whole answer is then replaced by the replan.
    """
    new_tasks = _new_tasks(record, answer.new_tasks)
    if new_tasks:  # the rest of the answer is checked against the run as it will be, new tasks pending
        record = record.model_copy()
        record.add_tasks(new_tasks)
    tasks = record.tasks
    mentioned = (
        set(answer.failure_analysis)
        | set(answer.retry_strategies)
        | set(answer.skip_tasks)
        | {r.target_task for r in answer.routed_context}
        | {k for b in answer.batches for k in b}
    )
    if unknown := sorted(mentioned - set(tasks)):
        raise ValueError(f"unknown task keys: {', '.join(unknown)}")
    failed = {k for k, s in tasks.items() if s.status in FAILED_STATUSES}
    pending = {k for k, s in tasks.items() if s.status is TaskStatus.pending}
    retryable = default_retries(record)
    retry: dict[str, str] = {}
    skip: dict[str, str] = {}
    for key, strategy in answer.retry_strategies.items():
        if key not in failed:
            raise ValueError(f"retry_strategies: {key} did not fail")
        if strategy.action == "skip":
            skip[key] = f"skipped by the pilot: {strategy.reason}"
        elif key not in retryable:
            raise ValueError(f"retry_strategies: {key} has no runs left")
        else:
            retry[key] = strategy.guidance or retryable[key]
    for key in answer.skip_tasks:
        if key not in failed | pending:
            raise ValueError(f"skip_tasks: {key} is neither failed nor still to run")
        skip.setdefault(key, "skipped by the pilot")
        retry.pop(key, None)
    for key, guidance in retryable.items():  # failed tasks the pilot left alone keep the replan's course
        if key not in answer.retry_strategies and key not in skip:
            retry[key] = guidance
    decision = settle(
        record,
        Decision(source="pilot", retry=retry, skip=skip, learnings=answer.new_learnings, new_tasks=new_tasks),
    )
    upcoming = {k for b in decision.batches for k in b}
    for routed in answer.routed_context:
        if routed.target_task not in upcoming:
            raise ValueError(f"routed_context: {routed.target_task} is not an upcoming task")
        decision.routed.setdefault(routed.target_task, []).append(routed.context)
    problem = _batches_problem(record, decision.batches, answer.batches)
    if problem is None:
        decision.batches = [list(b) for b in answer.batches if b]
    return decision, problem


def _new_tasks(record: RunRecord, new: list[NewTask]) -> list[TaskSpec]:
    """The answer's new tasks, checked as a task set's are once laid over the run's: a key clashing with
    a task of the run, an unknown dependency or a cycle raises ValueError."""
    specs = [TaskSpec(**t.model_dump()) for t in new]
    try:
        check_tasks(with_tasks(record.taskset, specs), "new_tasks")
    except InputError as exc:
        raise ValueError(f"new_tasks: {exc.problem}") from None
    return specs


def _batches_problem(record: RunRecord, default: list[list[str]], proposed: list[list[str]]) -> str | None:
    flat = [k for b in proposed for k in b]
    expected = {k for b in default for k in b}
    if len(flat) != len(set(flat)):
        return "batches: a task appears more than once"
    if set(flat) != expected:
        return f"batches must hold exactly: {', '.join(sorted(expected)) or 'nothing'}"
    if any(len(b) > record.taskset.max_batch_size for b in proposed):
        return f"batches: more than max_batch_size ({record.taskset.max_batch_size}) tasks in one"
    seen: set[str] = set()
    for batch in proposed:
        for key in batch:
            early = [d for d in record.taskset.task(key).depends_on if d in expected and d not in seen]
            if early:
                return f"batches: {key} comes before its dependency {early[0]}"
        seen.update(batch)
    return None
