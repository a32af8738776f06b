"""How a run record lies in Redis: in parts, so a write costs what changed and a job reads its own part.

- `otto-farm:run:<id>` (string): the head, the record without its task set, usage, task states and
  batches: what every reader needs, small at any size of run but for the plan still to run.
- `…:tasks` (hash): task key → its TaskState, without its results (stored apart, `keys.results_key`).
- `…:batches` (hash): batch index → its BatchRecord.

A write sends only the parts whose JSON changed (`write`), so a batch boundary writes its batch and
the tasks it moved, not the run; a job reads the head, its task and its batch (`Store.job_view`).
The task states' order is the task set's (the stored one, then the pilot's additions). A run stored
whole in its head by an earlier version is read as it is and split at its next update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from otto_farm import keys
from otto_farm.errors import InputError
from otto_farm.models import BatchRecord, RunRecord, TaskSet, TaskState

_HEAD_EXCLUDE: Any = {"taskset": True, "usage": True, "tasks": True, "batches": True}
# A task's results have a hash of their own; when its job started is read from the started hash; its
# key is the hash's field. Defaults are left out too: a state is kept at about half its size.
_STATE_EXCLUDE = {"key", "results", "started_at"}


@dataclass
class Parts:
    """A record's parts as stored: JSON text each."""

    head: str | None
    tasks: dict[str, str] = field(default_factory=dict)
    batches: dict[str, str] = field(default_factory=dict)


def split(record: RunRecord) -> Parts:
    return Parts(
        record.model_dump_json(exclude=_HEAD_EXCLUDE),
        {
            k: s.model_dump_json(exclude=_STATE_EXCLUDE, exclude_defaults=True)
            for k, s in record.tasks.items()
        },
        {str(b.index): b.model_dump_json(exclude_defaults=True) for b in record.batches},
    )


def head(run_id: str, raw: str | None) -> dict[str, Any]:
    """The head's JSON, read."""
    if raw is None:
        raise InputError("run", run_id, "no such run")
    return dict(json.loads(raw))


def join(parts: Parts, run_id: str, taskset: TaskSet, usage: dict[str, str]) -> RunRecord:
    """The record from its parts; `taskset` is the run's, with the pilot's tasks laid over it."""
    parsed = head(run_id, parts.head)
    whole_tasks, whole_batches = parsed.pop("tasks", None), parsed.pop("batches", None)  # a whole head
    states = {k: {"key": k, **json.loads(v)} for k, v in parts.tasks.items()} or whole_tasks or {}
    tasks = {t.key: states[t.key] for t in taskset.tasks if t.key in states}
    batches = [json.loads(parts.batches[i]) for i in sorted(parts.batches, key=int)] or whole_batches or []
    data = {
        **parsed,
        "taskset": taskset,
        "usage": usage,
        "tasks": tasks,
        "batches": batches,
    }
    return RunRecord.model_validate(data)


def write(pipe: Any, run_id: str, parts: Parts, before: Parts | None = None) -> None:
    """Queue the writes of the parts that differ from `before` (all of them without it)."""
    if before is None or parts.head != before.head:
        pipe.set(keys.run_key(run_id), parts.head)
    for name, now, then in (
        (keys.tasks_key(run_id), parts.tasks, before.tasks if before else {}),
        (keys.batches_key(run_id), parts.batches, before.batches if before else {}),
    ):
        if changed := {k: v for k, v in now.items() if then.get(k) != v}:
            pipe.hset(name, mapping=changed)


@dataclass
class JobView:
    """What a job reads of its run: the run's fixed parts, its batch, and its task's state with the
    results of its runs so far. A slice of the record, so a job's read does not grow with the run."""

    run_id: str
    repo: str
    taskset_dir: str
    taskset: TaskSet
    learnings: list[str]
    batch: BatchRecord
    state: TaskState
    cancelled: bool
