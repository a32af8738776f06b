"""Starts runs and moves them from batch to batch: store results, merge, decide, dispatch the next chord."""

from __future__ import annotations

from pathlib import Path

from otto_farm import chords, gate, gitops, pilot, runparts, taskrun
from otto_farm.errors import InputError
from otto_farm.models import (
    BatchRecord,
    BatchStatus,
    ChainLink,
    Decision,
    GateState,
    PilotAnswer,
    RunRecord,
    RunStatus,
    TaskResult,
    TaskState,
    TaskStatus,
    utcnow,
)
from otto_farm.plan import carry_on, initial, replan
from otto_farm.store import LOCK_WAIT_S, Store, new_run_id
from otto_farm.taskset import LoadedTaskSet


def start(store: Store, loaded: LoadedTaskSet) -> RunRecord:
    """Record a new run and dispatch its first batch."""
    ts = loaded.taskset
    run_id = new_run_id()
    record = RunRecord(
        run_id=run_id,
        name=ts.name,
        source=str(loaded.source),
        taskset_dir=str(loaded.source.parent),
        taskset=ts,
        repo=loaded.repo,
        base=loaded.base,
        base_sha=loaded.base_sha,
        integration_branch=ts.integration_branch or f"otto-farm/{run_id}/integration",
        tasks={t.key: TaskState(key=t.key) for t in ts.tasks},
        plan=initial(ts),
    )
    store.create(record)
    if ts.gate.enabled:  # a green base first: no agent runs on a tree that fails already
        store.emit(run_id, "gate_started", batch=-1, round=0, checks=1)
        chords.send_gate(record, -1, 0, {gate.BASE: record.base_sha})
        return record
    return dispatch_next(store, run_id, after=-1) or store.get(run_id)


def dispatch_next(store: Store, run_id: str, after: int) -> RunRecord | None:
    """Turn the next planned batch into a chord of run_task jobs with a batch_done callback.

    Only once batch `after` is the last one (-1: none yet), so the callback and the reconciler
    cannot both dispatch it; None if it was dispatched already.
    """
    opened: list[bool] = []

    def change(record: RunRecord) -> None:
        opened[:] = [len(record.batches) == after + 1 and record.status is RunStatus.running]
        if opened[0]:
            _open_next(record)

    record = store.update(run_id, change)
    if not opened[0]:
        return None
    _send_next(store, record)
    return record


def _open_next(record: RunRecord) -> None:
    """Record the next planned batch as running: its tasks at their next run."""
    keys = record.plan.pop(0)
    prev = record.batches[-1] if record.batches else None
    record.batches.append(
        BatchRecord(
            index=len(record.batches),
            tasks=keys,
            base_ref=record.integration_branch if prev else record.base,
            base_sha=(prev.merged_sha or record.base_sha) if prev else record.base_sha,
        )
    )
    for key in keys:
        state = record.tasks[key]
        state.status, state.batch, state.runs = TaskStatus.running, len(record.batches) - 1, state.runs + 1


def _send_next(store: Store, record: RunRecord) -> None:
    """Send the chord of the batch `_open_next` recorded."""
    batch = record.batches[-1]
    chords.send_batch(record, batch)
    store.emit(record.run_id, "batch_started", batch=batch.index, tasks=",".join(batch.tasks))


def stored(record: RunRecord, key: str) -> bool:
    """Whether the task's current run has its result in the record."""
    state = record.tasks[key]
    return state.result_of(state.runs) is not None


def finish_batch(
    store: Store,
    work_dir: Path,
    run_id: str,
    index: int,
    results: list[dict[str, object]],
    wait_s: float = LOCK_WAIT_S,
    reconciled: bool = False,
) -> None:
    """The chord callback's work: store results, merge passing branches, then decide what comes next.
    `reconciled`: the sweep does it for a lost callback, and says so (`batch_reconciled`) if it does.

    With failures and the pilot on, the decision goes to a pilot job chained to `apply_pilot`; else the
    replan decides here. Serialised per run by a lease, and only a `running` batch is handled, so a
    redelivered callback never merges twice.
    """
    window = runparts.Window(index)  # the batch's tasks: a boundary's reads do not grow with the run
    with store.lock(run_id, wait_s):
        current = store.get(run_id, tasks=(), window=window)
        if (
            current.status is not RunStatus.running
            or current.batches[index].status is not BatchStatus.running
        ):
            return  # a redelivered callback, or a cancelled run
        store.fill_results(current, current.batches[index].tasks)
        # The jobs stored their own results; only one whose store write failed is missing here.
        missing = [
            result
            for result in map(TaskResult.model_validate, results)
            if current.tasks[result.task_key].result_of(result.run_no) is None
        ]
        for result in missing:
            store.add_result(result)
        if missing:
            current = store.get(run_id, tasks=current.batches[index].tasks, window=window)
        batch = current.batches[index]
        if not all(stored(current, k) for k in batch.tasks):
            # Fired early: a job delivered twice counts twice in Celery's chord counter (celery#4207).
            # The sweep finishes the batch once every result is in.
            store.emit(run_id, "callback_early", batch=index)
            return
        if reconciled:  # here, under the lock: a sweep that found the batch already finished says nothing
            store.emit(run_id, "batch_reconciled", batch=index)
        candidates = [
            (k, taskrun.branch_name(run_id, k))
            for k in batch.tasks
            if (s := current.tasks[k]).status is TaskStatus.passed and s.last and s.last.commit_sha
        ]
        gated = current.taskset.gate.enabled
        try:
            if candidates or (index == 0 and not gated):  # ungated, the first batch makes the branch
                outcome = gitops.merge(
                    gitops.RepoCache(work_dir, current.repo),
                    gate.candidate_branch(run_id) if gated else current.integration_branch,
                    batch.base_sha,
                    current.base,
                    candidates,
                    run_id,
                    current.taskset.integration_branch,
                    candidate=gated,
                )
            else:  # nothing to merge: the branch stays where the last batch left it
                outcome = gitops.MergeOutcome(sha=batch.base_sha)
        except Exception as exc:  # the callback boundary: the run ends as an infrastructure error
            fail(store, run_id, f"merging batch {index} failed: {exc}")
            return

        def change(record: RunRecord) -> None:
            if record.status is not RunStatus.running:
                return  # cancelled meanwhile: `cancel` takes no lock
            batch = record.batches[index]
            for key in batch.tasks:  # the jobs' results become the tasks' states (store.fill_results)
                state, done = record.tasks[key], current.tasks[key]
                state.status, state.reason, state.error_code = done.status, done.reason, done.error_code
            mark_conflicts(record, outcome.conflicts)
            if gated and outcome.merged:  # the integration branch moves once the gate passes
                chain = [ChainLink(key=k, sha=sha) for k, sha in outcome.chain]
                batch.status, batch.gate = (
                    BatchStatus.gating,
                    GateState(chain=chain, pending={gate.FULL: outcome.sha}),
                )
            else:
                close_batch(record, index, outcome.sha)

        record = store.update(run_id, change, window=window)
    if record.status is RunStatus.cancelled:
        return
    store.emit(
        run_id,
        "batch_merged",
        batch=index,
        sha=outcome.sha,
        merged=",".join(outcome.merged),
        conflicts=",".join(outcome.conflicts),
    )
    send_next_step(store, record, index)


def mark_conflicts(record: RunRecord, conflicts: dict[str, list[str]]) -> None:
    """Tasks whose branches did not merge: `merge_conflict`, with the files."""
    for key, files in conflicts.items():
        state = record.tasks[key]
        state.status, state.reason = TaskStatus.merge_conflict, "conflict in " + ", ".join(files)


def close_batch(record: RunRecord, index: int, sha: str) -> None:
    """The batch's merges are on the integration branch at `sha` (its passed tasks' `merged_sha`, which
    the store derives from the batch's, runparts.join): decide what comes next."""
    batch = record.batches[index]
    batch.merged_sha = record.integration_sha = sha
    decision = carry_on(record, index)
    if decision is None and pilot.needed(record, index):
        batch.status = BatchStatus.deciding
    else:
        _conclude(record, index, decision or replan(record))


def send_next_step(store: Store, record: RunRecord, index: int) -> None:
    """Send what the batch's new state asks for: its gate checks, the pilot, or the next batch."""
    batch = record.batches[index]
    if batch.status is BatchStatus.gating and batch.gate is not None:
        store.emit(
            record.run_id, "gate_started", batch=index, round=batch.gate.round, checks=len(batch.gate.pending)
        )
        chords.send_gate(record, index, batch.gate.round, batch.gate.pending)
    elif batch.status is BatchStatus.deciding:
        store.emit(record.run_id, "pilot_started", batch=index)
        chords.send_pilot(record, index)
    elif record.status is not RunStatus.running or batch.status is BatchStatus.done:
        _advance(store, record, index)


def apply_pilot(
    store: Store, run_id: str, index: int, answer: PilotAnswer, wait_s: float = LOCK_WAIT_S
) -> None:
    """Validate the pilot's answer against the run, apply it (or the replan), then dispatch or finish."""
    with store.lock(run_id, wait_s):
        current = store.get(run_id, tasks=())
        if (
            current.status is not RunStatus.running
            or current.batches[index].status is not BatchStatus.deciding
        ):
            return  # a redelivered answer (the first one was applied), or a cancelled run
        if answer.superseded:
            return  # a second delivery's: the one holding the pilot's lease answers

        def change(record: RunRecord) -> None:
            if record.status is not RunStatus.running:
                return  # cancelled meanwhile
            decision, entry = pilot.to_decision(record, answer)
            record.batches[index].pilot = entry
            record.usage = record.usage + answer.usage  # as the store counts it, for the budget check
            _conclude(record, index, decision)

        record = store.update(run_id, change, usage=answer.usage)
    entry = record.batches[index].pilot
    if entry is not None:
        store.emit(
            run_id,
            "pilot_decided",
            batch=index,
            outcome=entry.outcome,
            reason=entry.reason,
            cost_usd=entry.usage.cost_usd,
        )
    _advance(store, record, index)


def _conclude(record: RunRecord, index: int, decision: Decision) -> None:
    """Apply the batch's decision, close the batch, and open the next one (or end the run)."""
    batch = record.batches[index]
    batch.decision = decision.kept()
    if batch.pilot is not None and batch.pilot.applied is not None:
        batch.pilot.applied = batch.pilot.applied.kept()
    record.add_tasks(decision.new_tasks)  # first: the skips and batches below may name them
    for key, guidance in decision.retry.items():
        state = record.tasks[key]
        state.status, state.guidance = TaskStatus.pending, guidance
    for key, reason in decision.skip.items():
        state = record.tasks[key]
        state.status, state.reason = TaskStatus.skipped, reason
    for key, contexts in decision.routed.items():
        record.tasks[key].context.extend(contexts)
    record.learnings.extend(decision.learnings)
    record.plan = decision.batches
    batch.status, batch.finished_at = BatchStatus.done, utcnow()
    budget = record.taskset.budget.max_cost_usd
    spent = budget is not None and record.usage.cost_usd >= budget
    if spent and (
        record.plan or any(s.error_code == "budget_spent" for s in runparts.whole(record).tasks.values())
    ):
        # What merged stays merged; the tasks still planned stay pending.
        record.status, record.finished_at = RunStatus.budget_exceeded, utcnow()
        record.error = f"budget spent: ${record.usage.cost_usd:.4f} of ${budget:.4f}"
    elif not record.plan:
        done = all(s.status is TaskStatus.passed for s in runparts.whole(record).tasks.values())
        record.status = RunStatus.passed if done else RunStatus.failed
        record.finished_at = utcnow()
    else:  # in the same write: one record update fewer at each batch boundary
        _open_next(record)


def _advance(store: Store, record: RunRecord, index: int) -> None:
    """After a batch is concluded: report the decision, then send the next batch's chord or end the run."""
    decision = record.batches[index].decision
    if decision is not None:
        store.emit(
            record.run_id,
            "decision",
            batch=index,
            source=decision.source,
            retry=",".join(decision.retry),
            skip=",".join(decision.skip),
            batches=len(decision.batches) + decision.later_batches,
        )
    if record.status is RunStatus.running:
        _send_next(store, record)
    else:
        store.emit(record.run_id, "run_finished", status=record.status.value, sha=record.integration_sha)


def cancel(store: Store, run_id: str) -> RunRecord:
    """End a running run as cancelled: nothing more is dispatched, and its running jobs stop.

    Each running job polls the run's cancel mark while its commands run and then kills their process
    group, as on a timeout; a job not yet started ends at once. Their results no longer move the run.
    It takes no lock, so it never waits on a callback (or on a dead one's lock): the callbacks' updates
    leave a run that is no longer running alone.
    """

    def change(record: RunRecord) -> None:
        if record.status is not RunStatus.running:
            raise InputError("run", run_id, f"has already ended ({record.status.value})")
        record.status, record.finished_at = RunStatus.cancelled, utcnow()
        for state in record.tasks.values():
            if state.status in (TaskStatus.pending, TaskStatus.running):
                state.status, state.reason = TaskStatus.skipped, "run cancelled"

    record = store.update(run_id, change)
    store.request_cancel(run_id)
    store.emit(run_id, "run_finished", status=RunStatus.cancelled.value, sha=record.integration_sha)
    return record


def fail(store: Store, run_id: str, error: str) -> None:
    """End a run on an infrastructure failure."""

    def change(record: RunRecord) -> None:
        if record.status is RunStatus.running:
            record.status, record.error, record.finished_at = RunStatus.error, error, utcnow()

    store.update(run_id, change)
    store.emit(run_id, "run_finished", status=RunStatus.error.value, error=error)
