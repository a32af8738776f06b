"""Starts runs and moves them from batch to batch: store results, merge, decide, dispatch the next chord."""

from __future__ import annotations

from pathlib import Path

from celery import chain, chord

from otto_farm import gitops, pilot, taskrun
from otto_farm.celery_app import CONTROL_QUEUE, PILOT_QUEUE, TASKS_QUEUE, app
from otto_farm.errors import InputError
from otto_farm.models import (
    BatchRecord,
    BatchStatus,
    Decision,
    PilotAnswer,
    RunRecord,
    RunStatus,
    TaskResult,
    TaskState,
    TaskStatus,
    utcnow,
)
from otto_farm.plan import initial, replan
from otto_farm.store import Store, new_run_id
from otto_farm.taskset import LoadedTaskSet

# Beyond the agent's own limit: time for git, verify start-up and reporting before Celery steps in.
SOFT_LIMIT_GRACE_S, HARD_LIMIT_GRACE_S = 60, 120
CALLBACK_LOCK_S = 900
# How often a batch's reconciler looks for a chord whose callback never fired (celery#4207).
RECONCILE_AFTER_S = 60.0


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
    return dispatch_next(store, run_id)


def dispatch_next(store: Store, run_id: str) -> RunRecord:
    """Turn the next planned batch into a chord of run_task jobs with a batch_done callback."""

    def change(record: RunRecord) -> None:
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
            state.status, state.batch, state.runs = (
                TaskStatus.running,
                len(record.batches) - 1,
                state.runs + 1,
            )

    record = store.update(run_id, change)
    _send_batch(record, record.batches[-1])
    schedule_reconcile(run_id, len(record.batches) - 1)
    store.emit(
        run_id, "batch_started", batch=len(record.batches) - 1, tasks=",".join(record.batches[-1].tasks)
    )
    return record


def schedule_reconcile(run_id: str, index: int) -> None:
    app.send_task(
        "otto_farm.reconcile", args=(run_id, index), queue=CONTROL_QUEUE, countdown=RECONCILE_AFTER_S
    )


def reconcile(store: Store, work_dir: Path, run_id: str, index: int) -> bool:
    """Finish a running batch whose jobs all stored their results but whose callback never ran.

    A chord can lose its callback (a header job delivered twice upsets its counter, celery#4207);
    the results are in the run record all the same. Returns whether to look again later.
    """
    record = store.get(run_id)
    batch = record.batches[index]
    if record.status is not RunStatus.running or batch.status is not BatchStatus.running:
        return False
    if not all(any(r.run_no == record.tasks[k].runs for r in record.tasks[k].results) for k in batch.tasks):
        return True
    store.emit(run_id, "batch_reconciled", batch=index)
    finish_batch(store, work_dir, run_id, index, [])  # a no-op if the callback got there first
    return False


def job_id(run_id: str, batch: int, key: str, run_no: int) -> str:
    """A job's Celery task id: readable in Flower, and known to `cancel` without asking anyone."""
    return f"{run_id}.b{batch}.{key}.r{run_no}"


def _send_batch(record: RunRecord, batch: BatchRecord) -> None:
    """The batch's chord: one run_task per task (at its current run) and the batch_done callback."""
    run_id, timeout_s = record.run_id, record.taskset.timeout_s
    header = [
        app.signature(
            "otto_farm.run_task",
            args=(run_id, key, record.tasks[key].runs, batch.index),
            queue=TASKS_QUEUE,
            task_id=job_id(run_id, batch.index, key, record.tasks[key].runs),
            soft_time_limit=timeout_s + SOFT_LIMIT_GRACE_S,
            time_limit=timeout_s + HARD_LIMIT_GRACE_S,
        )
        for key in batch.tasks
    ]
    callback = app.signature(
        "otto_farm.batch_done",
        args=(run_id, batch.index),
        queue=CONTROL_QUEUE,
        task_id=f"{run_id}.b{batch.index}.done",
    )
    chord(header)(callback)
    _untrack([sig.id for sig in header])


def _send_pilot(record: RunRecord, index: int) -> None:
    """The pilot job chained to the step that applies its answer."""
    run_id, timeout_s = record.run_id, record.taskset.pilot.timeout_s
    chain(
        app.signature(
            "otto_farm.pilot",
            args=(run_id, index),
            queue=PILOT_QUEUE,
            task_id=f"{run_id}.b{index}.pilot",
            # The request and the SDK's two retries; past that Celery interrupts it, caught as an error.
            soft_time_limit=3 * timeout_s + SOFT_LIMIT_GRACE_S,
            time_limit=3 * timeout_s + HARD_LIMIT_GRACE_S,
        ),
        app.signature(
            "otto_farm.apply_pilot",
            args=(run_id, index),
            queue=CONTROL_QUEUE,
            task_id=f"{run_id}.b{index}.apply",
        ),
    ).apply_async()


def _untrack(task_ids: list[str]) -> None:
    """Drop Celery's local tracking of the header results: nobody here waits on them.

    Celery 5.x keeps them (and a pubsub subscription each) until a result drainer sees them finish;
    with none running they pile up in a long-lived control worker, and unsubscribe at interpreter
    exit, when an embedded Redis may be gone. There is no public API to drop them by id.
    """
    backend = app.backend
    for mapping in getattr(backend, "_pending_results", ()):
        for task_id in task_ids:
            mapping.pop(task_id, None)
    if hasattr(backend, "result_consumer"):
        for task_id in task_ids:
            backend.result_consumer.cancel_for(task_id)


def finish_batch(
    store: Store, work_dir: Path, run_id: str, index: int, results: list[dict[str, object]]
) -> None:
    """The chord callback's work: store results, merge passing branches, then decide what comes next.

    With failures and the pilot on, the decision goes to a pilot job chained to `apply_pilot`; else the
    replan decides here. Serialised per run by a lease, and only a `running` batch is handled, so a
    redelivered callback never merges twice.
    """
    with store.lock(run_id, CALLBACK_LOCK_S):
        current = store.get(run_id)
        if (
            current.status is not RunStatus.running
            or current.batches[index].status is not BatchStatus.running
        ):
            return  # a redelivered callback, or a cancelled run
        # The jobs stored their own results; only one whose store write failed is missing here.
        missing = [
            result
            for result in map(TaskResult.model_validate, results)
            if not any(r.run_no == result.run_no for r in current.tasks[result.task_key].results)
        ]
        for result in missing:
            taskrun.save_result(store, result)
        record = store.get(run_id) if missing else current
        batch = record.batches[index]
        candidates = [
            (k, taskrun.branch_name(run_id, k))
            for k in batch.tasks
            if (s := record.tasks[k]).status is TaskStatus.passed and s.last and s.last.commit_sha
        ]
        try:
            if candidates or index == 0:  # the first batch creates the integration branch
                outcome = gitops.merge(
                    gitops.RepoCache(work_dir, record.repo),
                    record.integration_branch,
                    batch.base_sha,
                    record.base,
                    candidates,
                )
            else:  # nothing to merge: the branch stays where the last batch left it
                outcome = gitops.MergeOutcome(sha=batch.base_sha)
        except Exception as exc:  # the callback boundary: the run ends as an infrastructure error
            fail(store, run_id, f"merging batch {index} failed: {exc}")
            return

        def change(record: RunRecord) -> None:
            batch = record.batches[index]
            for key in outcome.merged:
                record.tasks[key].merged_sha = outcome.sha
            for key, files in outcome.conflicts.items():
                state = record.tasks[key]
                state.status, state.reason = TaskStatus.merge_conflict, "conflict in " + ", ".join(files)
            batch.merged_sha = record.integration_sha = outcome.sha
            if pilot.needed(record, index):
                batch.status = BatchStatus.deciding
            else:
                _conclude(record, index, replan(record))

        record = store.update(run_id, change)
    store.emit(
        run_id,
        "batch_merged",
        batch=index,
        sha=outcome.sha,
        merged=",".join(outcome.merged),
        conflicts=",".join(outcome.conflicts),
    )
    if record.batches[index].status is BatchStatus.deciding:
        store.emit(run_id, "pilot_started", batch=index)
        _send_pilot(record, index)
    else:
        _advance(store, record, index)


def apply_pilot(store: Store, run_id: str, index: int, answer: PilotAnswer) -> None:
    """Validate the pilot's answer against the run, apply it (or the replan), then dispatch or finish."""
    with store.lock(run_id, CALLBACK_LOCK_S):
        current = store.get(run_id)
        if (
            current.status is not RunStatus.running
            or current.batches[index].status is not BatchStatus.deciding
        ):
            return  # a redelivered answer (the first one was applied), or a cancelled run

        def change(record: RunRecord) -> None:
            decision, entry = pilot.to_decision(record, answer)
            record.batches[index].pilot = entry
            record.usage = record.usage + answer.usage
            _conclude(record, index, decision)

        record = store.update(run_id, change)
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
    """Apply the batch's decision to the record and close the batch (and the run, if nothing is left)."""
    batch = record.batches[index]
    batch.decision = decision
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
    if record.plan and budget is not None and record.usage.cost_usd >= budget:
        # What merged stays merged; the tasks still planned stay pending.
        record.status, record.finished_at = RunStatus.budget_exceeded, utcnow()
        record.error = f"budget spent: ${record.usage.cost_usd:.4f} of ${budget:.4f}"
    elif not record.plan:
        done = all(s.status is TaskStatus.passed for s in record.tasks.values())
        record.status = RunStatus.passed if done else RunStatus.failed
        record.finished_at = utcnow()


def _advance(store: Store, record: RunRecord, index: int) -> None:
    """After a batch is concluded: report the decision, then dispatch the next batch or end the run."""
    decision = record.batches[index].decision
    if decision is not None:
        store.emit(
            record.run_id,
            "decision",
            batch=index,
            source=decision.source,
            retry=",".join(decision.retry),
            skip=",".join(decision.skip),
            batches=len(decision.batches),
        )
    if record.status is RunStatus.running:
        dispatch_next(store, record.run_id)
    else:
        store.emit(record.run_id, "run_finished", status=record.status.value, sha=record.integration_sha)


def cancel(store: Store, run_id: str) -> RunRecord:
    """End a running run as cancelled: nothing more is dispatched, and its running jobs stop.

    Each running job polls the run's cancel mark while its commands run and then kills their process
    group, as on a timeout; a job not yet started ends at once. Their results no longer move the run.
    """
    with store.lock(run_id, CALLBACK_LOCK_S):

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


def resume(store: Store, run_id: str) -> str:
    """Send again what a running run waits for but may have lost; finished work is not redone.

    The current batch's chord goes out again (a job whose result is stored returns it at once), a
    lost pilot chain is re-sent, and a batch left done with nothing dispatched after it is followed.
    """
    record = store.get(run_id)
    if record.status is not RunStatus.running:
        raise InputError("run", run_id, f"has already ended ({record.status.value})")
    if not record.batches or record.batches[-1].status is BatchStatus.done:
        dispatch_next(store, run_id)
        return f"dispatched batch {len(store.get(run_id).batches)}"
    batch = record.batches[-1]
    if batch.status is BatchStatus.deciding:
        _send_pilot(record, batch.index)
        return f"asked the pilot again after batch {batch.index + 1}"
    done = [k for k in batch.tasks if any(r.run_no == record.tasks[k].runs for r in record.tasks[k].results)]
    _send_batch(record, batch)
    store.emit(run_id, "batch_resumed", batch=batch.index)
    return (
        f"re-sent batch {batch.index + 1}: {len(batch.tasks) - len(done)} of {len(batch.tasks)} jobs to run"
    )


def fail(store: Store, run_id: str, error: str) -> None:
    """End a run on an infrastructure failure."""

    def change(record: RunRecord) -> None:
        record.status, record.error, record.finished_at = RunStatus.error, error, utcnow()

    store.update(run_id, change)
    store.emit(run_id, "run_finished", status=RunStatus.error.value, error=error)
