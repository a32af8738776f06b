"""Dependency layers become batches; after a batch, the deterministic replan decides what runs next."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from otto_farm import runparts
from otto_farm.errors import OttoFarmError
from otto_farm.models import (
    FAILED_STATUSES,
    NOT_RETRIED_CODES,
    Decision,
    RunRecord,
    TaskSet,
    TaskState,
    TaskStatus,
)


class DependencyCycle(OttoFarmError):
    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("dependency cycle: " + " -> ".join(cycle))


def find_cycle(deps: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle as a closed path of keys (a -> b -> a), or None.

    Depth-first with an explicit stack: a chain of thousands of tasks is user-sized input, not a reason
    for a RecursionError.
    """
    finished: set[str] = set()
    for root in deps:
        if root in finished:
            continue
        path, on_path = [root], {root: 0}
        todo: list[Iterator[str]] = [iter(deps[root])]
        while todo:
            dep = next(todo[-1], None)
            if dep is None:
                todo.pop()
                finished.add(path[-1])
                del on_path[path.pop()]
            elif dep in on_path:
                return path[on_path[dep] :] + [dep]
            elif dep in deps and dep not in finished:
                on_path[dep] = len(path)
                path.append(dep)
                todo.append(iter(deps[dep]))
    return None


def dependents_of(deps: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Task → the tasks that depend on it, from task → its dependencies."""
    out: dict[str, list[str]] = {}
    for key, on in deps.items():
        for dep in on:
            out.setdefault(dep, []).append(key)
    return out


def batches(
    order: list[str], deps: Mapping[str, Iterable[str]], max_batch_size: int, done: Iterable[str] = ()
) -> list[list[str]]:
    """Layer `order` so each task comes after its dependencies (those in `done` count as met).

    Layers keep the order of `order`, and each is cut into batches of at most `max_batch_size`.
    """
    done_set = set(done)
    position = {k: i for i, k in enumerate(order)}
    waiting = {k: {d for d in deps.get(k, ()) if d not in done_set} for k in order}
    dependents = dependents_of(waiting)
    # Kahn's layering: linear in tasks and edges, where testing every task per layer was quadratic.
    layer = [k for k in order if not waiting[k]]
    out: list[list[str]] = []
    while layer:
        out.extend(layer[i : i + max_batch_size] for i in range(0, len(layer), max_batch_size))
        ready = []
        for key in layer:
            for child in dependents.get(key, ()):
                waiting[child].discard(key)
                if not waiting[child]:
                    ready.append(child)
        layer = sorted(ready, key=position.__getitem__)
    left = [k for k in order if waiting[k]]  # on a cycle, or after a dependency that never comes
    if left:
        raise DependencyCycle(find_cycle({k: deps.get(k, ()) for k in left}) or left)
    return out


def initial(ts: TaskSet) -> list[list[str]]:
    """A task set's batches before anything has run."""
    return batches([t.key for t in ts.tasks], ts.dependencies(), ts.max_batch_size)


def retry_guidance(record: RunRecord, key: str) -> str:
    """What the replan hands a retried task; its own verify output reaches it first-hand (prompt.py)."""
    state = record.tasks[key]
    if state.gate_output is not None:
        return (
            f"Your previous change passed its own verify, but once merged with the others of its batch "
            f"it broke `{record.taskset.gate_command}`, which the integration branch must pass:\n"
            f"{state.gate_output}\nRedo the change on top of the current code so that it passes."
        )
    if state.status is TaskStatus.merge_conflict:
        return (
            f"Your previous change did not merge into the integration branch: {state.reason}. "
            "The code you build on has moved; redo the change on top of it."
        )
    return "Your previous run did not pass. Fix what its output (below) shows, from the current code."


DEPENDENCY_LOST = "dependency {} did not pass"  # why the replan skips a task


def skipped_for_a_dependency(state: TaskState) -> bool:
    """Whether the replan skipped the task because a dependency did not pass (not the pilot's skip)."""
    prefix, suffix = DEPENDENCY_LOST.split("{}")
    reason = state.reason or ""
    return state.status is TaskStatus.skipped and reason.startswith(prefix) and reason.endswith(suffix)


def default_retries(record: RunRecord) -> dict[str, str]:
    """Every failed task with runs left, with the replan's guidance; not one whose agent could not run
    at all (NOT_RETRIED_CODES): another run would meet the same wall."""
    runs = record.taskset.max_task_runs
    return {
        k: retry_guidance(record, k)
        for k, s in record.tasks.items()
        if s.status in FAILED_STATUSES and s.runs < runs and s.error_code not in NOT_RETRIED_CODES
    }


def settle(record: RunRecord, decision: Decision) -> Decision:
    """Complete a decision's retries and skips: skip what depends on work that will never pass, re-layer.

    A task is lost when it failed without a retry, or is skipped; a pending task depending on a lost
    one is skipped too, and so on down its dependents. What is left becomes the default batches.
    """
    ts = record.taskset
    deps = ts.dependencies()
    lost = set(decision.skip) | {
        k
        for k, s in record.tasks.items()
        if (s.status in FAILED_STATUSES and k not in decision.retry) or s.status is TaskStatus.skipped
    }
    # Walk in dependency order so a skip cascades to its dependents' dependents.
    for key in (k for layer in batches(list(deps), deps, len(deps)) for k in layer):
        if record.tasks[key].status is TaskStatus.pending and key not in lost:
            gone = [d for d in deps[key] if d in lost]
            if gone:
                decision.skip[key] = DEPENDENCY_LOST.format(gone[0])
                lost.add(key)
    todo = [
        k
        for k in deps
        if k not in lost and (record.tasks[k].status is TaskStatus.pending or k in decision.retry)
    ]
    passed = [k for k, s in record.tasks.items() if s.status is TaskStatus.passed]
    decision.batches = batches(todo, deps, ts.max_batch_size, done=passed)
    return decision


def replan(record: RunRecord) -> Decision:
    """Retry failed tasks with runs left, skip tasks whose dependencies failed for good, re-layer the rest."""
    record = runparts.whole(record)
    return settle(record, Decision(source="replan", retry=default_retries(record)))


def carry_on(record: RunRecord, index: int) -> Decision | None:
    """The plan stands when every task of the batch passed and batches remain: there is nothing to retry
    or skip, and the plan already puts each task after its dependencies. None when the replan or the
    pilot must decide. It reads the batch alone, so such a boundary reads a window of the run."""
    batch = record.batches[index]
    if not record.plan or any(record.tasks[k].status is not TaskStatus.passed for k in batch.tasks):
        return None
    return Decision(source="replan", batches=record.plan)
