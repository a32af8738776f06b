"""Dependency layers, cycle finding, and the deterministic replan after a batch."""

from __future__ import annotations

import pytest

from otto_farm.models import TaskResult, TaskState, TaskStatus
from otto_farm.plan import DependencyCycle, batches, find_cycle, replan
from otto_farm.prompt import previous_run_failure

from conftest import make_record


def test_batches_are_layers_in_file_order():
    deps = {"c": [], "a": [], "d": ["b"], "b": ["a"], "e": ["a", "c"]}
    assert batches(["c", "a", "d", "b", "e"], deps, 8) == [["c", "a"], ["b", "e"], ["d"]]


def test_batches_split_by_max_batch_size():
    order = ["t1", "t2", "t3", "t4", "t5", "t6"]
    deps = {"t6": ["t1"]}
    assert batches(order, deps, 2) == [["t1", "t2"], ["t3", "t4"], ["t5"], ["t6"]]
    assert batches(order, deps, 1) == [[k] for k in order]


def test_done_counts_as_met():
    deps = {"b": ["a"], "c": ["b"]}
    assert batches(["b", "c"], deps, 8, done=["a"]) == [["b"], ["c"]]
    assert batches(["c"], deps, 8, done=["a", "b"]) == [["c"]]
    assert batches([], deps, 8, done=["a"]) == []


def test_cycle_raises_dependency_cycle():
    deps = {"x": [], "a": ["b"], "b": ["c"], "c": ["a"]}
    with pytest.raises(DependencyCycle) as info:
        batches(["x", "a", "b", "c"], deps, 8)
    assert info.value.cycle == ["a", "b", "c", "a"]
    assert str(info.value) == "dependency cycle: a -> b -> c -> a"


def test_find_cycle():
    assert find_cycle({}) is None
    assert find_cycle({"a": [], "b": ["a"]}) is None
    # A diamond reaches d twice without a cycle.
    assert find_cycle({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}) is None
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    # The path into the cycle is not part of it.
    assert find_cycle({"x": ["a"], "a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
    # Keys outside the mapping are not followed.
    assert find_cycle({"a": ["zz"], "b": ["a"]}) is None


def result(key: str, status: TaskStatus, run_no: int = 1, verify_tail: str = "") -> TaskResult:
    return TaskResult(
        run_id="r1", task_key=key, run_no=run_no, batch=0, status=status, verify_tail=verify_tail
    )


def ended(
    key: str, status: TaskStatus, runs: int = 1, verify_tail: str = "", reason: str | None = None
) -> TaskState:
    results = [result(key, status, n, verify_tail if n == runs else "old output") for n in range(1, runs + 1)]
    return TaskState(key=key, status=status, batch=0, runs=runs, results=results, reason=reason)


def test_failed_task_with_runs_left_is_retried_with_its_own_verify_output():
    tasks = [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p"}, {"key": "c", "prompt": "p"}]
    record = make_record(
        tasks,
        {
            "a": ended("a", TaskStatus.failed, verify_tail="E   assert add(1, 1) == 3"),
            "b": ended("b", TaskStatus.failed, verify_tail="FAILED test_b.py::test_b - KeyError"),
            "c": ended("c", TaskStatus.passed),
        },
        max_task_runs=2,
    )
    decision = replan(record)
    assert set(decision.retry) == {"a", "b"}
    # The guidance says to retry; each task's next run reads its own verify output first-hand.
    assert "did not pass" in decision.retry["a"]
    own = previous_run_failure(record.tasks["a"])
    assert "assert add(1, 1) == 3" in own and "KeyError" not in own
    assert "KeyError" in previous_run_failure(record.tasks["b"])
    assert previous_run_failure(record.tasks["c"]) is None
    assert decision.skip == {}
    assert decision.batches == [["a", "b"]]
    assert decision.source == "replan"


def test_retried_task_reads_its_last_run():
    state = ended("a", TaskStatus.failed, runs=2, verify_tail="FAILED newest")
    own = previous_run_failure(state)
    assert "FAILED newest" in own
    assert "old output" not in own


def test_error_without_verify_output_is_retried_with_its_reason():
    state = ended("a", TaskStatus.timeout)
    state.results[-1].error_code, state.results[-1].error = "agent_timeout", "agent timed out after 60s"
    record = make_record([{"key": "a", "prompt": "p"}], {"a": state})
    assert "a" in replan(record).retry
    own = previous_run_failure(state)
    assert "timeout (agent_timeout)" in own
    assert "agent timed out after 60s" in own


def test_failed_task_without_runs_left_skips_its_dependents_transitively():
    tasks = [
        {"key": "a", "prompt": "p"},
        {"key": "b", "prompt": "p", "depends_on": ["a"]},
        {"key": "c", "prompt": "p", "depends_on": ["b"]},
        {"key": "d", "prompt": "p"},
        {"key": "e", "prompt": "p", "depends_on": ["d", "c"]},
    ]
    record = make_record(
        tasks,
        {"a": ended("a", TaskStatus.failed, runs=2), "d": ended("d", TaskStatus.passed)},
        max_task_runs=2,
    )
    decision = replan(record)
    assert decision.retry == {}
    assert set(decision.skip) == {"b", "c", "e"}
    assert "dependency a" in decision.skip["b"]
    assert "dependency b" in decision.skip["c"]
    assert "dependency c" in decision.skip["e"]
    assert decision.batches == []


def test_skipped_task_skips_its_pending_dependents():
    tasks = [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p", "depends_on": ["a"]}]
    record = make_record(tasks, {"a": TaskState(key="a", status=TaskStatus.skipped, reason="dependency z")})
    assert replan(record).skip == {"b": "dependency a did not pass"}


def test_merge_conflict_is_retried_with_the_conflicting_files():
    tasks = [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p"}]
    conflict = ended("a", TaskStatus.merge_conflict, verify_tail="3 passed", reason="conflict in a.py")
    record = make_record(tasks, {"a": conflict, "b": ended("b", TaskStatus.passed)})
    decision = replan(record)
    assert "conflict in a.py" in decision.retry["a"]
    assert "3 passed" not in decision.retry["a"]  # verify passed; its output is no help here
    assert decision.batches == [["a"]]


def test_batches_hold_remaining_and_retried_minus_skipped_dependencies_first():
    tasks = [
        {"key": "p", "prompt": "passed"},
        {"key": "f", "prompt": "failed, retried"},
        {"key": "g", "prompt": "failed for good"},
        {"key": "x", "prompt": "needs f", "depends_on": ["f"]},
        {"key": "y", "prompt": "needs g", "depends_on": ["g"]},
        {"key": "z", "prompt": "needs p", "depends_on": ["p"]},
        {"key": "w", "prompt": "needs x and z", "depends_on": ["x", "z"]},
        {"key": "v", "prompt": "free"},
    ]
    record = make_record(
        tasks,
        {
            "p": ended("p", TaskStatus.passed),
            "f": ended("f", TaskStatus.error, runs=1),
            "g": ended("g", TaskStatus.failed, runs=2),
        },
        max_task_runs=2,
        max_batch_size=2,
    )
    decision = replan(record)
    assert set(decision.retry) == {"f"}
    assert set(decision.skip) == {"y"}
    assert decision.batches == [["f", "z"], ["v"], ["x"], ["w"]]


def test_replan_leaves_nothing_when_all_passed():
    tasks = [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p", "depends_on": ["a"]}]
    record = make_record(tasks, {k: ended(k, TaskStatus.passed) for k in ("a", "b")})
    decision = replan(record)
    assert (decision.retry, decision.skip, decision.batches) == ({}, {}, [])
