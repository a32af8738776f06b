"""Every Redis key otto-farm uses, under one prefix; no key literal lives anywhere else."""

from __future__ import annotations

PREFIX = "otto-farm"


def run_key(run_id: str) -> str:
    """The run record as JSON, without its task set and results (store.py)."""
    return f"{PREFIX}:run:{run_id}"


def events_key(run_id: str) -> str:
    """The run's progress event stream (XADD)."""
    return f"{PREFIX}:run:{run_id}:events"


def batch_lock_key(run_id: str) -> str:
    """Serialises a run's batch callbacks, so a redelivered callback cannot merge beside the first."""
    return f"{PREFIX}:run:{run_id}:lock"


def cancel_key(run_id: str) -> str:
    """Present once the run is cancelled: running jobs poll it and stop their commands."""
    return f"{PREFIX}:run:{run_id}:cancelled"


def runs_index_key() -> str:
    """Sorted set of run ids, scored by creation time."""
    return f"{PREFIX}:runs"


def claims_key(run_id: str) -> str:
    """Set of the run's job ids that started and have not finished (see lease.py)."""
    return f"{PREFIX}:run:{run_id}:claims"


def lease_key(job_id: str) -> str:
    """Held, with a time to live, by the one delivery of a job that runs it."""
    return f"{PREFIX}:lease:{job_id}"


def active_runs_key() -> str:
    """Set of the run ids the reconciler still looks after."""
    return f"{PREFIX}:active"


def sweep_lock_key() -> str:
    """Held by the one reconciler sweep running, when several control workers send them."""
    return f"{PREFIX}:sweep"


def taskset_key(run_id: str) -> str:
    """The run's task set as JSON, compressed (packed.squeeze), written once."""
    return f"{PREFIX}:run:{run_id}:taskset"


def states_key(run_id: str) -> str:
    """Hash of the run's task states (TaskState without results), packed in buckets (packed.py)."""
    return f"{PREFIX}:run:{run_id}:states"


def batch_records_key(run_id: str) -> str:
    """Hash of the run's batches (BatchRecord), packed in buckets of consecutive indexes (packed.py)."""
    return f"{PREFIX}:run:{run_id}:batch-records"


def tasks_key(run_id: str) -> str:
    """An earlier version's hash of the task states, one field a task: read, then replaced by `states_key`."""
    return f"{PREFIX}:run:{run_id}:tasks"


def batches_key(run_id: str) -> str:
    """An earlier version's hash of the batches, one field a batch: read, then replaced likewise."""
    return f"{PREFIX}:run:{run_id}:batches"


def results_key(run_id: str) -> str:
    """Hash of the run's TaskResults, field `<task>#<run_no>`; expires after its last write."""
    return f"{PREFIX}:run:{run_id}:results"


def transcripts_key(run_id: str) -> str:
    """Hash of an LLM agent's transcripts, field `<task>#<run_no>#<attempt>`; expires likewise."""
    return f"{PREFIX}:run:{run_id}:transcripts"


def plan_key(run_id: str) -> str:
    """The batches still to dispatch, first first, each a JSON list of task keys (runparts.py)."""
    return f"{PREFIX}:run:{run_id}:plan"


def usage_key(run_id: str) -> str:
    """Hash of the run's usage counters (tokens, cost), added to with HINCRBY as results come in."""
    return f"{PREFIX}:run:{run_id}:usage"


def gates_key(run_id: str) -> str:
    """Hash of the run's gate checks (GateCheck), field `<batch>#<round>#<label>`; expires like results."""
    return f"{PREFIX}:run:{run_id}:gates"


def limiter_key(key_id: str) -> str:
    """Hash of one API key's rate-limit buckets and pause, shared by the fleet (limiter.py)."""
    return f"{PREFIX}:limit:{key_id}"


def spend_key(run_id: str) -> str:
    """What the run's API calls have cost so far, counted as each returns, on any worker (budget.py)."""
    return f"{PREFIX}:run:{run_id}:spend"


def live_key(run_id: str, task: str) -> str:
    """Stream of what the task's running commands print, in bounded chunks; capped, with a time to live."""
    return f"{PREFIX}:run:{run_id}:live:{task}"


def sandboxes_key(run_id: str) -> str:
    """Set of the sandbox kinds the run's jobs ran in (`status` warns of `none` without reading results)."""
    return f"{PREFIX}:run:{run_id}:sandboxes"


def started_key(run_id: str) -> str:
    """Hash of when each job of the run started, field `<task>#<run_no>`; expires like results."""
    return f"{PREFIX}:run:{run_id}:started"
