"""The pilot's validation rules, context and fallbacks, on run records built by hand (no Celery)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from otto_farm.coordinator import _conclude
from otto_farm.models import BatchRecord, PilotAnswer, TaskResult, TaskSpec, TaskState, TaskStatus
from otto_farm.pilot import PilotDecision, context, needed, to_decision

from conftest import make_record

TASKS = [
    {"key": "a", "prompt": "build a"},
    {"key": "b", "prompt": "build b"},
    {"key": "c", "prompt": "build c on a", "depends_on": ["a"]},
    {"key": "d", "prompt": "build d on a", "depends_on": ["a"]},
]


def after_batch(b_runs: int = 1, **fields: Any):
    """Batch 0 ran a (passed) and b (failed); c and d wait."""

    def done(key: str, status: TaskStatus, runs: int = 1, tail: str = "") -> TaskState:
        result = TaskResult(
            run_id="r1",
            task_key=key,
            run_no=runs,
            batch=0,
            status=status,
            verify_tail=tail,
            error_code=None if status is TaskStatus.passed else "verify_failed",
        )
        return TaskState(key=key, status=status, batch=0, runs=runs, results=[result])

    record = make_record(
        TASKS,
        {"a": done("a", TaskStatus.passed), "b": done("b", TaskStatus.failed, b_runs, "E  assert 2 == 3")},
        max_task_runs=2,
        **fields,
    )
    record.batches.append(BatchRecord(index=0, tasks=["a", "b"], base_ref="main", base_sha="0" * 40))
    return record


def answer(**decision: Any) -> PilotAnswer:
    return PilotAnswer(batch=0, model="m", raw=json.dumps(decision))


GOOD = {
    "failure_analysis": {"b": {"category": "code_bug", "explanation": "off by one"}},
    "retry_strategies": {"b": {"action": "retry_different", "guidance": "count from zero", "reason": "bug"}},
    "routed_context": [{"target_task": "c", "context": "a exposes make_a()"}],
    "new_learnings": ["tests use pytest"],
    "batches": [["b", "d"], ["c"]],
}


def test_valid_decision_is_applied_whole():
    decision, entry = to_decision(after_batch(), answer(**GOOD))
    assert entry.outcome == "applied" and entry.reason is None
    assert decision.source == "pilot"
    assert decision.retry == {"b": "count from zero"}
    assert decision.routed == {"c": ["a exposes make_a()"]}
    assert decision.learnings == ["tests use pytest"]
    assert decision.batches == [["b", "d"], ["c"]]
    assert entry.applied == decision


def test_unknown_key_falls_back_to_the_replan():
    decision, entry = to_decision(after_batch(), answer(**{**GOOD, "skip_tasks": ["zz"]}))
    assert entry.outcome == "fallback_replan" and "zz" in entry.reason
    assert decision.source == "replan" and decision.routed == {}


def test_retry_of_a_task_that_did_not_fail_falls_back():
    strategies = {**GOOD["retry_strategies"], "a": {"action": "retry", "reason": "again"}}
    _, entry = to_decision(after_batch(), answer(**{**GOOD, "retry_strategies": strategies}))
    assert entry.outcome == "fallback_replan" and "a did not fail" in entry.reason


def test_retry_of_a_task_without_runs_left_falls_back():
    decision, entry = to_decision(after_batch(b_runs=2), answer(**GOOD))
    assert entry.outcome == "fallback_replan" and "b has no runs left" in entry.reason
    assert "b" not in decision.retry


def test_context_routed_to_a_task_that_will_not_run_falls_back():
    routed = [{"target_task": "a", "context": "to a passed task"}]
    _, entry = to_decision(after_batch(), answer(**{**GOOD, "routed_context": routed}))
    assert entry.outcome == "fallback_replan" and "a is not an upcoming task" in entry.reason


def test_invalid_batches_alone_keep_the_default_batches_and_apply_the_rest():
    for bad, why in [
        ([["b", "d"]], "exactly"),  # c missing
        ([["b", "d", "c"], ["c"]], "more than once"),
    ]:
        decision, entry = to_decision(after_batch(), answer(**{**GOOD, "batches": bad}))
        assert entry.outcome == "default_batches" and why in entry.reason
        assert decision.batches == [["b", "c", "d"]]
        assert decision.retry == {"b": "count from zero"} and decision.routed == {"c": ["a exposes make_a()"]}


def test_batches_must_respect_dependencies_still_to_run():
    tasks = [{"key": "b", "prompt": "p"}, {"key": "e", "prompt": "needs b", "depends_on": ["b"]}]
    record = make_record(
        tasks,
        {
            "b": TaskState(
                key="b",
                status=TaskStatus.failed,
                runs=1,
                results=[TaskResult(run_id="r1", task_key="b", run_no=1, batch=0, status=TaskStatus.failed)],
            )
        },
    )
    record.batches.append(BatchRecord(index=0, tasks=["b"], base_ref="main", base_sha="0" * 40))
    _, entry = to_decision(
        record, answer(retry_strategies={"b": {"action": "retry", "reason": "r"}}, batches=[["e", "b"]])
    )
    assert entry.outcome == "default_batches" and "e comes before its dependency b" in entry.reason


def test_skip_ends_the_task_and_its_dependents():
    decision, entry = to_decision(
        after_batch(),
        answer(
            skip_tasks=["d"],
            retry_strategies={"b": {"action": "skip", "reason": "cannot work"}},
            batches=[["c"]],
        ),
    )
    assert entry.outcome == "applied"
    assert set(decision.skip) == {"b", "d"} and "cannot work" in decision.skip["b"]
    assert decision.batches == [["c"]]


def test_unparsable_or_schema_invalid_answers_fall_back():
    for raw in [
        "not json",
        '{"batches": [["b"]',
        '{"batches": "b"}',
        json.dumps({"retry_strategies": {"b": {"action": "retry_different", "reason": "no guidance given"}}}),
    ]:
        decision, entry = to_decision(after_batch(), PilotAnswer(batch=0, model="m", raw=raw))
        assert entry.outcome == "fallback_replan", raw
        assert decision.retry.keys() == {"b"} and decision.source == "replan"


def test_api_error_falls_back_with_its_reason():
    _, entry = to_decision(after_batch(), PilotAnswer(batch=0, model="m", error="APITimeoutError: timed out"))
    assert entry.outcome == "fallback_replan" and "timed out" in entry.reason


def test_needed_only_after_a_failure_with_work_left_and_the_pilot_on():
    assert needed(after_batch(), 0)
    assert not needed(after_batch(pilot={"enabled": False}), 0)
    clean = after_batch()
    clean.tasks["b"].status = TaskStatus.passed
    assert not needed(clean, 0)
    last = after_batch(b_runs=2)
    for key in ("c", "d"):
        last.tasks[key].status = TaskStatus.skipped
    assert not needed(last, 0)  # b has no runs left and nothing waits


def test_context_is_bounded_keeps_errors_and_key_lists():
    record = after_batch(pilot={"max_context_chars": 2000})
    record.tasks["b"].results[0].verify_tail = "noise\n" * 2000 + "E  the real error"
    text = context(record, 0)
    assert len(text) <= 2000
    assert "E  the real error" in text
    assert "failed, with runs left (retry, retry_different or skip): b" in text
    assert "still to run (routed_context targets, skip_tasks): c, d" in text
    assert "new_tasks: at most 3 fix tasks, each with a key of its own (taken: a, b, c, d)" in text


def test_decision_schema_is_the_tool_schema():
    schema = PilotDecision.model_json_schema()
    assert {
        "failure_analysis",
        "retry_strategies",
        "routed_context",
        "skip_tasks",
        "new_learnings",
        "new_tasks",
        "batches",
    } <= set(schema["properties"])
    assert schema["properties"]["new_tasks"]["maxItems"] == 3


def test_no_pilot_once_the_budget_is_spent():
    record = after_batch(budget={"max_cost_usd": 1.0})
    assert needed(record, 0)
    record.usage.cost_usd = 1.0
    assert not needed(record, 0)


FIX = {"key": "fix-b", "prompt": "make b's test pass", "depends_on": ["b"], "verify": "pytest -q tests/b"}


def test_a_new_task_is_added_pending_and_planned_after_its_dependency():
    record = after_batch()
    decision, entry = to_decision(
        record, answer(**{**GOOD, "new_tasks": [FIX], "batches": [["b", "d"], ["c", "fix-b"]]})
    )
    assert entry.outcome == "applied"
    assert decision.new_tasks == [TaskSpec(**FIX)] and decision.batches == [["b", "d"], ["c", "fix-b"]]
    assert "fix-b" not in record.tasks and len(record.taskset.tasks) == 4  # checking changed nothing yet
    # Without batches of its own, the default ones put it after b, which is retried.
    decision, entry = to_decision(record, answer(**{**GOOD, "new_tasks": [FIX], "batches": []}))
    assert entry.outcome == "default_batches" and decision.batches == [["b", "c", "d"], ["fix-b"]]
    _, entry = to_decision(
        record, answer(**{**GOOD, "new_tasks": [FIX], "batches": [["fix-b", "b", "c", "d"]]})
    )
    assert entry.outcome == "default_batches" and "fix-b comes before its dependency b" in entry.reason
    _conclude(record, 0, decision)  # as the coordinator applies it
    assert record.added_tasks == [TaskSpec(**FIX)] and record.tasks["fix-b"].status is TaskStatus.pending
    assert record.plan == [["fix-b"]]  # b, c and d are running, in the next batch
    assert record.taskset.verify_for("fix-b") == "pytest -q tests/b"
    assert record.taskset.agent_for("fix-b") == record.taskset.agent  # the set's agent and sandbox


@pytest.mark.parametrize(
    ("new_tasks", "why"),
    [
        ([{**FIX, "key": "a"}], "duplicate key 'a'"),  # a task of the run
        ([FIX, FIX], "duplicate key 'fix-b'"),
        ([{**FIX, "key": "Fix B"}], "new_tasks.0.key"),  # unsafe: the schema's pattern refuses it
        ([{**FIX, "depends_on": ["zz"]}], "unknown task 'zz'"),
        (
            [{**FIX, "key": "x", "depends_on": ["y"]}, {**FIX, "key": "y", "depends_on": ["x"]}],
            "dependency cycle: x -> y -> x",
        ),
        ([{**FIX, "key": f"fix{i}"} for i in range(4)], "at most 3 items"),
        ([{**FIX, "prompt": "x" * 8001}], "at most 8000 characters"),
    ],
)
def test_an_invalid_new_task_falls_back_to_the_replan(new_tasks, why):
    # Like any other rule the answer breaks: only its batches being wrong keeps the rest of it.
    decision, entry = to_decision(after_batch(), answer(**{**GOOD, "new_tasks": new_tasks}))
    assert entry.outcome == "fallback_replan" and why in entry.reason
    assert decision.source == "replan" and decision.new_tasks == []


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("new_learnings", ["x" * 3_000_000], "at most 1000 characters"),
        ("new_learnings", ["tests use pytest"] * 21, "at most 20 items"),
        ("failure_analysis", {"b": {"category": "code_bug", "explanation": "x" * 2001}}, "at most 2000"),
        ("routed_context", [{"target_task": "c", "context": "x" * 4001}], "at most 4000 characters"),
        ("skip_tasks", ["x" * 65], "at most 64 characters"),
    ],
)
def test_every_string_and_list_of_an_answer_is_bounded(field, value, why):
    # Measured: 3 MB strings made a 39 MB run record, rewritten on every update.
    decision, entry = to_decision(after_batch(), answer(**{**GOOD, field: value}))
    assert entry.outcome == "fallback_replan" and why in entry.reason and len(entry.reason) <= 2000
    assert decision.source == "replan"


def test_the_tool_schema_carries_the_bounds():
    schema = json.dumps(PilotDecision.model_json_schema())
    assert '"maxLength": 1000' in schema and '"maxItems": 20' in schema


def _ask(server, *replies) -> Any:
    from otto_farm.llm import AnthropicClient
    from otto_farm.pilot import ask
    from otto_farm.scripted_server import ScriptedReply

    server.script(*(ScriptedReply(**r) for r in replies))
    return ask(after_batch(), 0, AnthropicClient())


def test_the_pilot_takes_only_its_own_tool_and_non_negative_usage(pilot_server, monkeypatch):
    # Measured: a `bash` tool_use was taken as the decision; negative token counts made the run's
    # cost -$2,010,000, so the budget could never be reached.
    from conftest import LLM_ENV

    for name, value in LLM_ENV.items():
        monkeypatch.setenv(name, value)
    answer = _ask(pilot_server, {"tool_input": GOOD, "tool_name": "bash", "input_tokens": -(10**9)})
    assert answer.error == "no decide_next_batches call in the answer"
    assert answer.usage.input_tokens == 0 and answer.usage.cost_usd >= 0
    answer = _ask(pilot_server, {"tool_input": GOOD, "output_tokens": -5, "input_tokens": 100})
    assert answer.error is None and answer.usage.output_tokens == 0 and answer.usage.input_tokens == 100
    assert to_decision(after_batch(), answer)[1].outcome == "applied"
    huge = {**GOOD, "new_learnings": ["x" * 1000] * 3000}  # 3 MB
    answer = _ask(pilot_server, {"tool_input": huge})
    assert "over the 65,536 bound" in answer.error and len(answer.raw) == 65536
    assert to_decision(after_batch(), answer)[1].outcome == "fallback_replan"


def test_usage_is_never_negative():
    from pydantic import ValidationError

    from otto_farm.models import Usage

    with pytest.raises(ValidationError):
        Usage(input_tokens=-1)
    with pytest.raises(ValidationError):
        Usage(cost_usd=float("nan"))
