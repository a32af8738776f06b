"""Recovery: what the sweep does for a run left waiting by lost work, and what `otto-farm resume` sends."""

from __future__ import annotations

from pathlib import Path

from otto_farm import chords, gate, lease, pilot, taskrun
from otto_farm.coordinator import apply_pilot, dispatch_next, finish_batch, stored
from otto_farm.errors import InputError
from otto_farm.gating import finish_gate
from otto_farm.models import BatchStatus, GateCheck, PilotAnswer, RunRecord, RunStatus
from otto_farm.store import Store


def reconcile(store: Store, work_dir: Path, run_id: str) -> str | None:
    """Move a run on where a lost job, callback or pilot left it waiting; says what it did, if anything.

    Lost means: a job claimed and no longer leased (its worker died; lease.py), or every result stored
    with the batch still running (the chord callback was lost, or never fired: celery#4207), or a batch
    concluded with nothing dispatched after it. Everything done here is idempotent, so a sweep that
    races the normal flow, or another sweep, changes nothing twice.
    """
    record = store.get(run_id, tasks=())
    if record.status is not RunStatus.running:
        store.retire(run_id)
        return None
    if not record.batches and record.taskset.gate.enabled and record.base_gate is None:
        return _reconcile_gate(store, work_dir, record, -1, 0, {gate.BASE: record.base_sha})
    if (
        record.batches
        and (state := record.batches[-1].gate)
        and record.batches[-1].status is BatchStatus.gating
    ):
        return _reconcile_gate(store, work_dir, record, len(record.batches) - 1, state.round, state.pending)
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
            apply_pilot(store, run_id, batch.index, ended)  # the replan decides
            return f"the replan decided after batch {batch.index + 1}"
        chords.send_pilot(record, batch.index)
        store.emit(run_id, "pilot_resent", batch=batch.index)
        return f"asked the pilot again after batch {batch.index + 1}"
    store.fill_results(record, batch.tasks)
    missing = [k for k in batch.tasks if not stored(record, k)]
    if not missing:
        store.emit(run_id, "batch_reconciled", batch=batch.index)
        finish_batch(store, work_dir, run_id, batch.index, [])  # a no-op if the callback got there first
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
            store, work_dir, run_id, index, round_no, [c.model_dump(mode="json") for c in checks.values()]
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


def resume(store: Store, run_id: str) -> str:
    """Send again what a running run waits for but may have lost; finished work is not redone.

    The current batch's chord goes out again (a job whose result is stored returns it at once), a
    lost pilot chain is re-sent, and a batch left done with nothing dispatched after it is followed.
    """
    record = store.get(run_id)
    if record.status is not RunStatus.running:
        raise InputError("run", run_id, f"has already ended ({record.status.value})")
    if not record.batches and record.taskset.gate.enabled and record.base_gate is None:
        chords.send_gate(record, -1, 0, {gate.BASE: record.base_sha})
        return "checked the base with the gate again"
    if (
        record.batches
        and (state := record.batches[-1].gate)
        and record.batches[-1].status is BatchStatus.gating
    ):
        chords.send_gate(record, len(record.batches) - 1, state.round, state.pending)
        return f"sent gate round {state.round} of batch {len(record.batches)} again"
    if not record.batches or record.batches[-1].status is BatchStatus.done:
        dispatch_next(store, run_id, after=len(record.batches) - 1)
        return f"dispatched batch {len(record.batches) + 1}"
    batch = record.batches[-1]
    if batch.status is BatchStatus.deciding:
        chords.send_pilot(record, batch.index)
        return f"asked the pilot again after batch {batch.index + 1}"
    done = [k for k in batch.tasks if stored(record, k)]
    chords.send_batch(record, batch)
    store.emit(run_id, "batch_resumed", batch=batch.index)
    return (
        f"re-sent batch {batch.index + 1}: {len(batch.tasks) - len(done)} of {len(batch.tasks)} jobs to run"
    )
