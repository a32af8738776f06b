"""The Celery jobs: thin wrappers that take ids, and call taskrun and the coordinator."""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Any

from celery import bootsteps, signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from celery.worker.request import Request
from redis.exceptions import RedisError

from otto_farm import coordinator, gate, gating, keys, llm, pilot, recovery, sandbox, taskrun
from otto_farm.celery_app import CONTROL_QUEUE, PILOT_QUEUE, TASKS_QUEUE, app
from otto_farm.lease import Lease, Lock
from otto_farm.meter import Meter
from otto_farm.models import BatchStatus, GateCheck, PilotAnswer, RunStatus
from otto_farm.settings import Settings
from otto_farm.store import Store

logger = get_task_logger(__name__)


@cache
def _settings() -> Settings:
    return Settings.load()


@cache
def _store() -> Store:
    return Store.from_url(_settings().resolved_store_url)


# Left out of what a job returns to its chord: the job stored its result whole (taskrun.run), and these
# logs (up to tens of KiB a task) would travel again in the callback's message, the result backend and
# Flower. A result the job could not store has none of them.
CHORD_RESULT_EXCLUDE = {"attempts", "verify_tail", "diff_stat"}
# The start of a run_task job's result as the worker reports it (a repr, cut at 1024 characters).
_OUTCOME = re.compile(r"\{'status': '(?P<status>\w+)', 'error_code': (?:'(?P<code>\w+)'|None)")


class RunTaskRequest(Request):  # type: ignore[misc]  # celery ships no types
    """A run_task job in the worker: one whose task did not pass is reported to monitors as failed.

    The job returns its task's failure as a result, so that the chord's callback runs (it runs only
    after successes) and Celery records SUCCESS; Flower, which reads the worker's events, is sent
    `task-failed` instead, with the task's status and error code as its exception.
    """

    def send_event(self, type: str, **fields: Any) -> None:
        found = _OUTCOME.match(str(fields.get("result", ""))) if type == "task-succeeded" else None
        if found and found["status"] != "passed":
            code = f" ({found['code']})" if found["code"] else ""
            type = "task-failed"
            fields = {
                "exception": f"task {found['status']}{code}",
                "traceback": "",
                "runtime": fields.get("runtime"),
            }
        super().send_event(type, **fields)


@app.task(name="otto_farm.run_task", bind=True, Request=RunTaskRequest)
def run_task(self: Any, run_id: str, task_key: str, run_no: int, batch: int) -> dict[str, Any]:
    """Run one task once; the returned result carries its status, so the chord callback always runs."""
    store = _store()

    def progress(phase: str, attempt: int) -> None:
        # One channel, the run's event stream, which status, logs and submit read: Celery's PROGRESS
        # state (update_state) cost a result-backend write and publish per phase besides.
        try:
            store.emit(run_id, "task_phase", task=task_key, phase=phase, attempt=attempt)
        except RedisError:  # a report for display: a blip in the store must not end the job
            logger.warning("progress of %s not reported: the store is unreachable", task_key)

    worker = self.request.hostname or ""
    try:
        result = taskrun.run(
            store,
            _settings().resolved_work_dir,
            run_id,
            task_key,
            run_no,
            batch,
            worker=worker,
            progress=progress,
            timeout_errors=(SoftTimeLimitExceeded,),
            lease_s=_settings().lease_s,
            hidden=_settings().hidden_paths(),
            limits=_settings().limits,
        )
    except RedisError:
        # The store (or the broker: the same Redis) went away: the job is lost, not failed. Raised, it
        # keeps its claim; the sweep sends it again, and no task run is spent (chords.killed).
        raise
    except Exception as exc:  # report it, so the chord callback still runs
        error = f"{type(exc).__name__}: {exc}"[-2000:]
        result = taskrun.error_result(
            run_id, task_key, run_no, batch, worker, error_code="infrastructure", error=error
        )
    out = result.model_dump(mode="json", exclude=CHORD_RESULT_EXCLUDE)
    # The outcome first: Flower's result column starts with it, and RunTaskRequest reads it there.
    return {"status": out["status"], "error_code": out["error_code"], **out}


@app.task(name="otto_farm.gate", bind=True)
def gate_job(self: Any, run_id: str, batch: int, round_no: int, label: str, sha: str) -> dict[str, Any]:
    """Check one commit with the gate command; a red or broken gate is a result, never an exception."""
    worker = self.request.hostname or ""
    try:
        check = gate.run(
            _store(),
            _settings().resolved_work_dir,
            run_id,
            batch,
            round_no,
            label,
            sha,
            worker=worker,
            hidden=_settings().hidden_paths(),
            lease_s=_settings().lease_s,
        )
    except Exception as exc:  # the store or the time limit: the callback reads the error, decides nothing
        error = f"{type(exc).__name__}: {exc}"[-2000:]
        check = GateCheck(
            run_id=run_id, batch=batch, round=round_no, label=label, sha=sha, passed=False, error=error
        )
    return check.model_dump(mode="json")


@app.task(name="otto_farm.gate_done")
def gate_done(results: list[dict[str, Any]], run_id: str, batch: int, round_no: int) -> None:
    """The callback of one round of the gate."""
    gating.finish_gate(_store(), _settings().resolved_work_dir, run_id, batch, round_no, results)


@app.task(name="otto_farm.batch_done")
def batch_done(results: list[dict[str, Any]], run_id: str, batch: int) -> None:
    """The chord callback of one batch."""
    coordinator.finish_batch(_store(), _settings().resolved_work_dir, run_id, batch, results)


def _consumes(worker: Any, queue: str) -> bool:
    """Whether this worker consumes `queue` (all queues when none were named)."""
    consumed = worker.app.amqp.queues.consume_from
    return consumed is None or queue in consumed


@signals.worker_init.connect
def _import_the_sdk(sender: Any, **kwargs: Any) -> None:
    """A worker on the pilot queue imports the anthropic SDK before it forks its pool processes.

    Imported lazily (llm.AnthropicClient), it cost each pool process's first pilot call about two
    seconds, at a batch boundary (bench/, benchmark 2).
    """
    if _consumes(sender, PILOT_QUEUE):
        import anthropic  # noqa: F401


@signals.worker_ready.connect
def _say_the_sandbox(sender: Any, **kwargs: Any) -> None:
    """A worker of coding jobs says in its log which sandbox their commands get (an `auto` task set's)."""
    if _consumes(sender, TASKS_QUEUE):
        logging.getLogger("otto_farm").warning("otto-farm %s", sandbox.describe())


@app.task(name="otto_farm.pilot")
def pilot_job(run_id: str, batch: int) -> dict[str, Any]:
    """Ask the pilot what comes after this batch; a failed call is an answer with its error."""
    store = _store()
    record = store.get(run_id)
    if record.batches[batch].status is not BatchStatus.deciding:  # redelivered after its answer was applied
        return PilotAnswer(batch=batch, model="", error="already decided").model_dump(mode="json")
    if record.status is not RunStatus.running:  # cancelled while it waited: an answer nobody would apply
        return PilotAnswer(batch=batch, model="", error=f"run {record.status.value}").model_dump(mode="json")
    held = Lease(store.redis, run_id, pilot.job_id(run_id, batch), _settings().lease_s)
    if not held.acquire():  # another delivery is asking right now; its answer is the one applied
        return PilotAnswer(batch=batch, model="", superseded=True).model_dump(mode="json")
    answer: dict[str, Any] | None = None
    try:
        meter = Meter.for_run(store.redis, run_id, record.taskset.budget.max_cost_usd, _settings().limits)
        answer = pilot.ask(record, batch, llm.AnthropicClient(meter)).model_dump(mode="json")
        return answer
    finally:
        held.release(finished=answer is not None)  # killed mid-call, it stays claimed: the sweep asks again


@app.task(name="otto_farm.apply_pilot")
def apply_pilot(answer: dict[str, Any], run_id: str, batch: int) -> None:
    """Apply the pilot's answer (or the replan, if it is unusable) and move the run on."""
    coordinator.apply_pilot(_store(), run_id, batch, PilotAnswer.model_validate(answer))


# No events: a sweep every sweep_s seconds would crowd out the runs' jobs in Flower.
@app.task(name="otto_farm.sweep", send_events=False)
def sweep() -> None:
    """Reconcile every active run (recovery.reconcile); one sweep at a time across control workers."""
    store = _store()
    guard = Lock(store.redis, keys.sweep_lock_key())  # a sweep that died with its worker frees it in seconds
    if not guard.acquire(wait_s=0):
        return
    try:
        for run_id in store.active_runs():
            try:
                if done := recovery.reconcile(store, _settings().resolved_work_dir, run_id):
                    logger.warning("reconciled run %s: %s", run_id, done)
            except Exception:  # one broken run must not stop the others being looked after
                logger.exception("reconciling run %s failed", run_id)
    finally:
        guard.release()


def _send_sweep() -> None:
    try:
        if not _store().active_runs():  # nothing to look after
            return
        app.send_task("otto_farm.sweep", queue=CONTROL_QUEUE, expires=_settings().sweep_s)
    except Exception:  # the broker is away for now: the next tick tries again
        logger.exception("could not send a sweep")


class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no types
    """In each worker that consumes the control queue, sends a sweep every `sweep_s` seconds while
    some run is active.

    A timer in the worker's own event loop rather than countdown messages: a countdown message sits
    unacked in the worker that fetched it, so it would die with that worker until Redis's
    visibility timeout (hours) handed it back.
    """

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        if _consumes(parent, CONTROL_QUEUE):
            self.tref = parent.timer.call_repeatedly(_settings().sweep_s, _send_sweep)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


app.steps["worker"].add(Sweeper)


@signals.worker_shutdown.connect
def _remove_sandbox_containers(sender: Any, **kwargs: Any) -> None:
    """The docker sandbox's containers, one per worktree slot of this worker, go with it."""
    sandbox.remove_containers(_settings().resolved_work_dir)
