"""The Celery jobs: thin wrappers that take ids, and call taskrun and the coordinator."""

from __future__ import annotations

from functools import cache
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from otto_farm import coordinator, pilot, taskrun
from otto_farm.celery_app import app
from otto_farm.models import BatchStatus, PilotAnswer
from otto_farm.settings import Settings
from otto_farm.store import Store


@cache
def _settings() -> Settings:
    return Settings.load()


@cache
def _store() -> Store:
    return Store.from_url(_settings().resolved_store_url)


@app.task(name="otto_farm.run_task", bind=True)
def run_task(self: Any, run_id: str, task_key: str, run_no: int, batch: int) -> dict[str, Any]:
    """Run one task once; the returned result carries its status, so the chord callback always runs."""
    store = _store()

    def progress(phase: str, attempt: int) -> None:
        self.update_state(
            state="PROGRESS", meta={"run_id": run_id, "task": task_key, "phase": phase, "attempt": attempt}
        )
        store.emit(run_id, "task_phase", task=task_key, phase=phase, attempt=attempt)

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
        )
    except Exception as exc:  # e.g. the store is unreachable: report it, so the chord callback still runs
        error = f"{type(exc).__name__}: {exc}"[-2000:]
        result = taskrun.error_result(
            run_id, task_key, run_no, batch, worker, error_code="infrastructure", error=error
        )
    return result.model_dump(mode="json")


@app.task(name="otto_farm.batch_done")
def batch_done(results: list[dict[str, Any]], run_id: str, batch: int) -> None:
    """The chord callback of one batch."""
    coordinator.finish_batch(_store(), _settings().resolved_work_dir, run_id, batch, results)


@app.task(name="otto_farm.pilot")
def pilot_job(run_id: str, batch: int) -> dict[str, Any]:
    """Ask the pilot what comes after this batch; a failed call is an answer with its error."""
    record = _store().get(run_id)
    if record.batches[batch].status is not BatchStatus.deciding:  # redelivered after its answer was applied
        return PilotAnswer(batch=batch, model="", error="already decided").model_dump(mode="json")
    return pilot.ask(record, batch, pilot.AnthropicClient()).model_dump(mode="json")


@app.task(name="otto_farm.apply_pilot")
def apply_pilot(answer: dict[str, Any], run_id: str, batch: int) -> None:
    """Apply the pilot's answer (or the replan, if it is unusable) and move the run on."""
    coordinator.apply_pilot(_store(), run_id, batch, PilotAnswer.model_validate(answer))


@app.task(name="otto_farm.reconcile")
def reconcile(run_id: str, batch: int) -> None:
    """Advance a batch whose chord callback was lost; look again later while its jobs still run."""
    if coordinator.reconcile(_store(), _settings().resolved_work_dir, run_id, batch):
        coordinator.schedule_reconcile(run_id, batch)
