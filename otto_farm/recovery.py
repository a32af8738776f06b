"""Recovery: what the sweep does for a run left waiting by lost work, what `otto-farm resume` sends, and
`otto-farm retry`: one task of an ended run run again."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from celery import Signature

from otto_farm import chords, gate, keys, lease, pilot, runparts, taskrun
from otto_farm.celery_app import CONTROL_QUEUE, PILOT_QUEUE, TASKS_QUEUE
from otto_farm.coordinator import apply_pilot, dispatch_next, finish_batch, stored
from otto_farm.errors import Busy, InfrastructureError, InputError
from otto_farm.gating import finish_gate
from otto_farm.models import (
    FAILED_STATUSES,
    BatchStatus,
    GateCheck,
    PilotAnswer,
    RunRecord,
    RunStatus,
    TaskStatus,
)
from otto_farm.plan import dependents_of, retry_guidance, skipped_for_a_dependency
from otto_farm.store import Store


def reconcile(store: Store, work_dir: Path, run_id: str) -> str | None:
    """Move a run on where a lost job, callback or pilot left it waiting; says what it did, if anything.

    Lost means: a job claimed and no longer leased (its worker died; lease.py), or every result stored
    with the batch still running (the chord callback was lost, or never fired: celery#4207), or a batch
    concluded with nothing dispatched after it. Everything done here is idempotent, so a sweep that
    races the normal flow, or another sweep, changes nothing twice.
    """
    record = store.get(run_id, tasks=(), window=runparts.Window(-1))  # the last batch: what can be lost
    if record.status is not RunStatus.running:
        store.retire(run_id)
        return None
    try:
        return _reconcile(store, work_dir, record)
    except Busy:  # a callback is at work on it (or its dead holder's lock has seconds left): next sweep
        return None


def _reconcile(store: Store, work_dir: Path, record: RunRecord) -> str | None:
    run_id = record.run_id
    if (gating := gate.waiting_round(record)) is not None:
        return _reconcile_gate(store, work_dir, record, *gating)
    if not record.batches or record.batches[-1].status is BatchStatus.done:
        if dispatch_next(store, run_id, after=len(record.batches) - 1) is None:
            return None
        return f"dispatched batch {len(record.batches) + 1}"
    batch = record.batches[-1]
    claimed = lease.claims(store.redis, run_id)
    if batch.status is BatchStatus.deciding:
        jid = pilot.job_id(run_id, batch.index)
        if jid not in claimed or lease.alive(store.redis, jid):
            return None
        lease.drop_claim(store.redis, run_id, jid)
        if (why := chords.killed(jid)) is not None:  # asking again would meet the same limit
            ended = PilotAnswer(batch=batch.index, model="", error=f"Celery ended the pilot job: {why}")
            apply_pilot(store, run_id, batch.index, ended, wait_s=0)  # the replan decides
            return f"the replan decided after batch {batch.index + 1}"
        chords.send_pilot(record, batch.index)
        store.emit(run_id, "pilot_resent", batch=batch.index)
        return f"asked the pilot again after batch {batch.index + 1}"
    store.fill_results(record, batch.tasks)
    missing = [k for k in batch.tasks if not stored(record, k)]
    if not missing:
        finish_batch(store, work_dir, run_id, batch.index, [], wait_s=0, reconciled=True)  # no-op if done
        return f"finished batch {batch.index + 1}"
    lost = [
        (key, jid)
        for key in missing
        if (jid := taskrun.job_id(run_id, batch.index, key, record.tasks[key].runs)) in claimed
        and not lease.alive(store.redis, jid)
    ]
    for key, jid in lost:
        lease.drop_claim(store.redis, run_id, jid)
        if (why := chords.killed(jid)) is not None:  # at the hard time limit: running it again would too
            failed = taskrun.error_result(
                run_id, key, record.tasks[key].runs, batch.index, "", error_code="job_killed"
            )
            failed.error = f"Celery ended the job: {why}"[-2000:]
            store.add_result(failed)
        else:  # its worker died: on its own, outside the chord; a later sweep finishes the batch
            chords.job(record, batch.index, key).apply_async()
            store.emit(run_id, "job_resent", batch=batch.index, task=key)
    return f"looked after lost jobs {', '.join(k for k, _ in lost)}" if lost else None


def _reconcile_gate(
    store: Store, work_dir: Path, record: RunRecord, index: int, round_no: int, pending: dict[str, str]
) -> str | None:
    """A gate round waits: finish it once every check is stored; send again a check lost with its
    worker (one Celery killed at its hard limit is a red check: the gate command hung)."""
    run_id = record.run_id
    checks = store.gate_checks(run_id, index, round_no, pending)
    if len(checks) == len(pending):
        finish_gate(
            store,
            work_dir,
            run_id,
            index,
            round_no,
            [c.model_dump(mode="json") for c in checks.values()],
            wait_s=0,
        )
        return f"finished gate round {round_no} of batch {index + 1}"
    claimed, lost = lease.claims(store.redis, run_id), []
    for label, sha in pending.items():
        jid = gate.job_id(run_id, index, round_no, label)
        if label in checks or jid not in claimed or lease.alive(store.redis, jid):
            continue
        lease.drop_claim(store.redis, run_id, jid)
        lost.append(label)
        if (why := chords.killed(jid)) is not None:
            killed = GateCheck(run_id=run_id, batch=index, round=round_no, label=label, sha=sha, passed=False)
            killed.output = f"Celery ended the gate job: {why}"[-2000:]
            store.add_gate_check(killed)
        else:
            chords.gate_job(record, index, round_no, label, sha).apply_async()
    return f"looked after lost gate checks {', '.join(lost)}" if lost else None


def resume(
    store: Store, run_id: str, served: Collection[str] | None = None, waiting: Collection[str] = ()
) -> str:
    """Send again what a running run waits for and lost; finished, started and queued work is not.

    A job is lost when its result is not stored, it is not claimed (started: running, or lost with its
    worker, which the sweep sends again), and its id is not among `waiting`, the jobs still queued in
    the broker: sending one of those again would make two deliveries meet, one holding a worker slot
    while it waits for the other. With no job of the chord out, the whole chord goes again (a stored
    job returns its result at once), so its callback moves the run; else the lost jobs go alone, and
    the sweep finishes the batch. A lost pilot chain is re-sent, and a batch left done with nothing
    dispatched after it is followed. `served`, the queues some worker consumes (None: not checked),
    must hold the ones this sends to: what goes anywhere else only waits.
    """
    record = store.get(run_id)
    if record.status is not RunStatus.running:
        raise InputError("run", run_id, f"has already ended ({record.status.value})")
    batch = record.batches[-1] if record.batches else None
    deciding = batch is not None and batch.status is BatchStatus.deciding
    for queue in (PILOT_QUEUE if deciding else TASKS_QUEUE, CONTROL_QUEUE):  # the jobs, their callbacks
        if served is not None and queue not in served:
            raise InfrastructureError(
                f"no worker consumes the queue {queue}: start one (`otto-farm up` or `otto-farm worker`), "
                "then resume again"
            )
    out = lease.claims(store.redis, run_id) | set(waiting)

    def chord(what: str, jobs: dict[str, Signature], done: Collection[str], send: Callable[[], None]) -> str:
        busy = [k for k, sig in jobs.items() if k not in done and sig.id in out]
        lost = [k for k in jobs if k not in done and k not in busy]
        if not busy:
            send()
            return f"re-sent {what}: {len(lost)} of {len(jobs)} jobs to run"
        for key in lost:
            jobs[key].apply_async()
        sent = f"; re-sent {', '.join(lost)}" if lost else "; nothing sent"
        return f"{what}: {len(busy)} of {len(jobs)} jobs started or queued{sent}"

    def gate_round(index: int, round_no: int, pending: dict[str, str]) -> str:
        return chord(
            "the base's gate check" if index < 0 else f"gate round {round_no} of batch {index + 1}",
            {label: chords.gate_job(record, index, round_no, label, sha) for label, sha in pending.items()},
            store.gate_checks(run_id, index, round_no, pending),
            lambda: chords.send_gate(record, index, round_no, pending),
        )

    if (gating := gate.waiting_round(record)) is not None:
        return gate_round(*gating)
    if batch is None or batch.status is BatchStatus.done:
        dispatch_next(store, run_id, after=len(record.batches) - 1)
        return f"dispatched batch {len(record.batches) + 1}"
    if deciding:
        if {pilot.job_id(run_id, batch.index), pilot.apply_id(run_id, batch.index)} & out:
            return f"the pilot is deciding after batch {batch.index + 1}; nothing sent"
        chords.send_pilot(record, batch.index)
        return f"asked the pilot again after batch {batch.index + 1}"
    store.emit(run_id, "batch_resumed", batch=batch.index)
    return chord(
        f"batch {batch.index + 1}",
        {key: chords.job(record, batch.index, key) for key in batch.tasks},
        [k for k in batch.tasks if stored(record, k)],
        lambda: chords.send_batch(record, batch),
    )


RETRIABLE = frozenset({RunStatus.passed, RunStatus.failed, RunStatus.budget_exceeded})  # ended by a decision


def retry(store: Store, run_id: str, key: str, feedback: str | None = None) -> RunRecord:
    """Run one task of an ended run again, in a batch of its own on the integration branch.

    `feedback` becomes its retry guidance (else a failed task gets the replan's). The run is running
    again: the batch is sent, merged and decided on as any other (the sweep looks after it), and the run
    ends after it as a run ends.
    """

    def change(record: RunRecord) -> None:
        if record.status not in RETRIABLE:
            raise InputError(
                "run",
                run_id,
                f"is {record.status.value}: only a passed, failed or budget_exceeded run retries",
            )
        state = record.tasks.get(key)
        if state is None:
            raise InputError("task", key, f"not in run {run_id}")
        failed = state.status in FAILED_STATUSES
        state.guidance = feedback or (retry_guidance(record, key) if failed else None)
        state.status, state.reason, state.error_code = TaskStatus.pending, None, None
        for waiting in _skipped_for(record, key):  # the replan after its batch runs them if it passes
            record.tasks[waiting].status, record.tasks[waiting].reason = TaskStatus.pending, None
        record.status, record.finished_at, record.error = RunStatus.running, None, None
        record.plan = [[key]]

    record = store.update(run_id, change)
    store.redis.sadd(keys.active_runs_key(), run_id)  # the sweep looks after running runs only
    store.emit(run_id, "task_retried", task=key)
    return dispatch_next(store, run_id, after=len(record.batches) - 1) or store.get(run_id)


def _skipped_for(record: RunRecord, key: str) -> list[str]:
    """The tasks skipped, directly or down the line, because `key` did not pass (not the pilot's skips)."""
    dependents = dependents_of(record.taskset.dependencies())
    found, todo = [], list(dependents.get(key, ()))
    while todo:
        child = todo.pop()
        if child in found or not skipped_for_a_dependency(record.tasks[child]):
            continue
        found.append(child)
        todo.extend(dependents.get(child, ()))
    return found
