"""A batch as Celery messages: a chord of run_task jobs with its batch_done callback, the gate's chords of
gate jobs, and the pilot chain."""

from __future__ import annotations

from celery import Signature, chain, chord
from celery.exceptions import TimeLimitExceeded

from otto_farm import gate, pilot, taskrun
from otto_farm.celery_app import CONTROL_QUEUE, PILOT_QUEUE, TASKS_QUEUE, app
from otto_farm.meter import WAIT_ALLOWANCE_S
from otto_farm.models import BatchRecord, RunRecord

# Beyond the agent's own limit: time for git, verify start-up and reporting before Celery steps in.
SOFT_LIMIT_GRACE_S, HARD_LIMIT_GRACE_S = 60, 120


def time_limits(timeout_s: float) -> tuple[float | None, float]:
    """Celery's soft and hard time limits for a job whose own deadline is `timeout_s` away."""
    return timeout_s + SOFT_LIMIT_GRACE_S, timeout_s + HARD_LIMIT_GRACE_S


def job(record: RunRecord, index: int, key: str) -> Signature:
    """The run_task job of a task's current run in batch `index`."""
    run_no = record.tasks[key].runs
    soft_s, hard_s = time_limits(record.taskset.timeout_s + WAIT_ALLOWANCE_S)  # its API calls' waits
    return app.signature(
        "otto_farm.run_task",
        args=(record.run_id, key, run_no, index),
        queue=TASKS_QUEUE,
        task_id=taskrun.job_id(record.run_id, index, key, run_no),
        soft_time_limit=soft_s,
        time_limit=hard_s,
    )


def send_batch(record: RunRecord, batch: BatchRecord) -> None:
    """The batch's chord: one run_task per task (at its current run) and the batch_done callback."""
    run_id = record.run_id
    header = [job(record, batch.index, key) for key in batch.tasks]
    callback = app.signature(
        "otto_farm.batch_done",
        args=(run_id, batch.index),
        queue=CONTROL_QUEUE,
        task_id=f"{run_id}.b{batch.index}.done",
    )
    chord(header)(callback)
    _untrack([sig.id for sig in header])


def gate_job(record: RunRecord, index: int, round_no: int, label: str, sha: str) -> Signature:
    """A gate job: check commit `sha` for batch `index` (-1: the base)."""
    soft_s, hard_s = time_limits(record.taskset.gate.timeout_s)
    return app.signature(
        "otto_farm.gate",
        args=(record.run_id, index, round_no, label, sha),
        queue=TASKS_QUEUE,  # it needs a repository cache and a worktree slot, as a task's job does
        task_id=gate.job_id(record.run_id, index, round_no, label),
        soft_time_limit=soft_s,
        time_limit=hard_s,
    )


def send_gate(record: RunRecord, index: int, round_no: int, checks: dict[str, str]) -> None:
    """One round of the gate, label → sha, as a chord: its checks run at once on as many workers."""
    header = [gate_job(record, index, round_no, label, sha) for label, sha in checks.items()]
    callback = app.signature(
        "otto_farm.gate_done",
        args=(record.run_id, index, round_no),
        queue=CONTROL_QUEUE,
        task_id=f"{record.run_id}.b{index}.g{round_no}.done",
    )
    chord(header)(callback)
    _untrack([sig.id for sig in header])


def send_pilot(record: RunRecord, index: int) -> None:
    """The pilot job chained to the step that applies its answer."""
    run_id = record.run_id
    # Its call, the meter's retries and their waits; past that Celery interrupts it, caught as an error.
    soft_s, hard_s = time_limits(3 * record.taskset.pilot.timeout_s + WAIT_ALLOWANCE_S)
    chain(
        app.signature(
            "otto_farm.pilot",
            args=(run_id, index),
            queue=PILOT_QUEUE,
            task_id=pilot.job_id(run_id, index),
            soft_time_limit=soft_s,
            time_limit=hard_s,
        ),
        app.signature(
            "otto_farm.apply_pilot",
            args=(run_id, index),
            queue=CONTROL_QUEUE,
            task_id=pilot.apply_id(run_id, index),
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


def killed(job_id: str) -> str | None:
    """Why Celery killed a job at its hard time limit, or None: a job that failed for another reason
    (it lost the store or the broker: a Redis blip) is a lost job, to run again, not a killed one."""
    ended = app.AsyncResult(job_id)
    at_limit = ended.state == "FAILURE" and isinstance(ended.result, TimeLimitExceeded)
    return repr(ended.result) if at_limit else None
