"""How a run record lies in Redis: in parts, so a write costs what changed and a job reads its own part.

- `otto-farm:run:<id>` (string): the head, the record without its task set, usage, task states,
  batches and plan: what every reader needs, small at any size of run.
- `…:states` (hash): the TaskStates, without their results (stored apart, `keys.results_key`), and
- `…:batch-records` (hash): the BatchRecords, both packed in buckets of a few dozen (packed.py).
- `…:plan` (list): the batches still to dispatch, each a JSON list of task keys. A boundary that keeps
  the plan takes its first batch (LPOP): however long the plan, a boundary or a job pays nothing for it.

A write sends only the buckets of the parts whose JSON changed (`write`), so a batch boundary writes
its batch and the tasks it moved, not the run; a job reads the head and the buckets of its task and
its batch (`Store.job_view`).
A boundary reads a *window* (`Window`): the head, its batch and the last, and their tasks' states
with those of the next planned batch, which alone of the plan it reads (the others stand as empty
batches, which no plan holds: `UNREAD_BATCH`). Code that needs the whole run calls `whole`, which
raises `Unread` on a window, as does a window's write of a plan changed otherwise than by taking its
first batch (`check`): `Store.update` then reads the whole run and runs its change again.
The task states' order is the task set's (the stored one, then the pilot's additions). A run stored
by an earlier version, whole in its head, with its plan there or a hash field a task or batch, is
read whole as it is and stored in this layout at its next update.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from otto_farm import keys, packed
from otto_farm.errors import InputError
from otto_farm.models import BatchRecord, RunRecord, TaskSet, TaskState, TaskStatus

_HEAD_EXCLUDE: Any = {"taskset": True, "usage": True, "tasks": True, "batches": True, "plan": True}
UNREAD_BATCH = "[]"  # a batch of the plan a window did not read; no plan holds an empty batch
# A task's results have a hash of their own; when its job started is read from the started hash; its
# key is the hash's field; its merged sha is its batch's (`join`). Defaults are left out too: a state
# is kept at about a quarter of its size.
_STATE_EXCLUDE = {"key", "results", "started_at", "merged_sha"}


@dataclass
class Parts:
    """A record's parts as stored: JSON text each; as read, with the buckets that held them."""

    head: str | None
    tasks: dict[str, str] = field(default_factory=dict)
    batches: dict[str, str] = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)
    state_buckets: packed.Buckets = field(default_factory=packed.Buckets)
    batch_buckets: packed.Buckets = field(default_factory=packed.Buckets)
    legacy: bool = False  # read from an earlier version's hashes, a field a task or batch


# Stands for a batch a window did not read, so that `record.batches[i]` keeps its meaning; never written.
UNREAD = BatchRecord.model_construct(index=-1, tasks=[], base_ref="", base_sha="")


class Unread(Exception):
    """Code that needs the whole run was given a window of it."""


def whole(record: RunRecord) -> RunRecord:
    """The record, if every task and batch of it was read; `Unread` if it is a window."""
    if record._window:
        raise Unread(record.run_id)
    return record


@dataclass
class Window:
    """Which parts a window read holds: batch `batch` (-1: the last) and the last, with their tasks."""

    batch: int
    count: int = 0  # how many batches the run has (HLEN), filled by the read

    def batch_fields(self) -> list[str]:
        last = self.count - 1
        return sorted({str(last if self.batch < 0 else self.batch), str(last)}) if self.count else []

    @staticmethod
    def task_keys(raw_batches: list[str | None], raw_plan: list[str], raw_head: str | None) -> list[str]:
        """The tasks of the batches read, and of the next planned batch (a boundary may open it)."""
        keys = [k for raw in raw_batches if raw is not None for k in json.loads(raw)["tasks"]]
        if raw_plan:
            return list(dict.fromkeys(keys + json.loads(raw_plan[0])))
        plan = json.loads(raw_head).get("plan") if raw_head is not None else None  # an earlier version's
        return list(dict.fromkeys(keys + (plan[0] if plan else [])))


def names(run_id: str) -> list[str]:
    """The keys the record's head, task states, batches and plan are stored in, and an earlier
    version's task states and batches."""
    return [
        keys.run_key(run_id),
        keys.states_key(run_id),
        keys.batch_records_key(run_id),
        keys.plan_key(run_id),
        keys.tasks_key(run_id),
        keys.batches_key(run_id),
    ]


def _buckets(client: Any, name: str, ids: list[str]) -> dict[str, str | None]:
    return dict(zip(ids, client.hmget(name, ids), strict=True)) if ids else {}


def read(
    client: Any, run_id: str, window: Window | None, places: Callable[[], Mapping[str, int]]
) -> tuple[Parts, dict[str, str], Window | None]:
    """The record's parts as stored, and its usage counters: whole, or a window's (the window returned
    says how many batches the run has; None: read whole, as an earlier version's layout is).
    `places` gives each task's place in the run's stored task set (packed.task_bucket), for a window."""
    run, states, batches, plan, old_states, old_batches = names(run_id)
    with client.pipeline(transaction=False) as pipe:
        pipe.get(run)
        pipe.hgetall(keys.usage_key(run_id))
        pipe.exists(old_states)
        if window is None:
            pipe.hgetall(states)
            pipe.hgetall(batches)
            pipe.lrange(plan, 0, -1)
            raw, usage, legacy, state_raws, batch_raws, raw_plan = pipe.execute()
            if legacy:
                state_raws, batch_raws = client.hgetall(old_states), client.hgetall(old_batches)
                return Parts(raw, state_raws, batch_raws, raw_plan, legacy=True), usage, None
            state_buckets = packed.Buckets.of(state_raws, whole=True)
            batch_buckets = packed.Buckets.of(batch_raws, whole=True)
            parts = Parts(raw, state_buckets.values(), batch_buckets.values(), raw_plan)
            parts.state_buckets, parts.batch_buckets = state_buckets, batch_buckets
            return parts, usage, None
        pipe.hlen(batches)
        pipe.lindex(plan, 0)
        pipe.llen(plan)
        raw, usage, legacy, stored_buckets, first, length = pipe.execute()
    if raw is None:
        return Parts(None), usage, window
    if legacy or ('"tasks":' in raw and "tasks" in json.loads(raw)):
        return read(client, run_id, None, places)
    last = stored_buckets - 1
    wanted = {str(last), packed.batch_bucket(window.batch)} if window.batch >= 0 else {str(last)}
    batch_buckets = packed.Buckets.of(
        _buckets(client, batches, sorted(wanted) if stored_buckets else []), False, stored_buckets
    )
    count = (
        last * packed.BATCHES_PER_BUCKET + len(batch_buckets.read.get(str(last), ())) if stored_buckets else 0
    )
    window = Window(window.batch, count)
    batch_values = batch_buckets.values()
    fields = [f for f in window.batch_fields() if f in batch_values]
    raw_plan = [first, *[UNREAD_BATCH] * (length - 1)] if first is not None else []
    task_keys = Window.task_keys([batch_values[f] for f in fields], raw_plan, raw)
    where = places()
    ids = sorted({packed.task_bucket(k, where) for k in task_keys})
    state_buckets = packed.Buckets.of(_buckets(client, states, ids), False, packed.task_buckets(where))
    state_values = state_buckets.values()
    parts = Parts(
        raw,
        {k: state_values[k] for k in task_keys if k in state_values},
        {f: batch_values[f] for f in fields},
        raw_plan,
    )
    parts.state_buckets, parts.batch_buckets = state_buckets, batch_buckets
    return parts, usage, window


def split(record: RunRecord) -> Parts:
    return Parts(
        record.model_dump_json(exclude=_HEAD_EXCLUDE),
        {
            k: s.model_dump_json(exclude=_STATE_EXCLUDE, exclude_defaults=True)
            for k, s in record.tasks.items()
        },
        {str(b.index): b.model_dump_json(exclude_defaults=True) for b in record.batches if b is not UNREAD},
        [json.dumps(batch, separators=(",", ":")) for batch in record.plan],
    )


def _changed(now: dict[str, str], then: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in now.items() if then.get(k) != v}


def check(parts: Parts, before: Parts, run_id: str, places: Mapping[str, int]) -> None:
    """Unread if a window's plan was changed otherwise than by taking its first batch, or a task or
    batch in a bucket the window did not read: writing those needs the whole run."""
    if UNREAD_BATCH in parts.plan and parts.plan not in (before.plan, before.plan[1:]):
        raise Unread(run_id)
    if before.state_buckets.unread(
        list(_changed(parts.tasks, before.tasks)), lambda key: packed.task_bucket(key, places)
    ):
        raise Unread(run_id)
    if before.batch_buckets.unread(list(_changed(parts.batches, before.batches)), _batch_bucket):
        raise Unread(run_id)


def _batch_bucket(index: str) -> str:
    return packed.batch_bucket(int(index))


def head(run_id: str, raw: str | None) -> dict[str, Any]:
    """The head's JSON, read."""
    if raw is None:
        raise InputError("run", run_id, "no such run")
    return dict(json.loads(raw))


_STATES: TypeAdapter[dict[str, TaskState]] = TypeAdapter(dict[str, TaskState])
_BATCHES: TypeAdapter[list[BatchRecord]] = TypeAdapter(list[BatchRecord])


def _states_json(states: dict[str, str], order: list[str]) -> str:
    """One JSON object of the stored states, in `order`, each with its key put back."""
    out = []
    for key in order:
        quoted, raw = json.dumps(key), states[key]
        out.append(f'{quoted}:{{"key":{quoted}' + ("}" if raw == "{}" else "," + raw[1:]))
    return "{" + ",".join(out) + "}"


class Seen(dict[str, tuple[str, TaskState]]):
    """The task states a reader parsed, by key, with the JSON they were parsed from: a reader that
    looks again and again (`status --watch`) parses only the states that changed. It gets the same
    objects back, with what it did to them (the results it loaded): a reader of one run's states."""


def _states(parts: Parts, order: list[str], seen: Seen | None) -> dict[str, TaskState]:
    """The stored states of `order`, parsed, or taken from `seen` where their JSON did not change."""
    fresh = order if seen is None else [k for k in order if seen.get(k, ("",))[0] != parts.tasks[k]]
    parsed = _STATES.validate_json(_states_json(parts.tasks, fresh)) if fresh else {}
    if seen is None:
        return parsed
    seen.update((k, (parts.tasks[k], parsed[k])) for k in fresh)
    return {k: seen[k][1] for k in order}


def join(
    parts: Parts,
    run_id: str,
    taskset: TaskSet,
    usage: dict[str, str],
    window: Window | None = None,
    seen: Seen | None = None,
) -> RunRecord:
    """The record from its parts; `taskset` is the run's, with the pilot's tasks laid over it. With
    `window`, the parts are those of a window read, and the record is marked a window; with `seen`,
    unchanged task states are not parsed again."""
    parsed = head(run_id, parts.head)
    whole_tasks, whole_batches = parsed.pop("tasks", None), parsed.pop("batches", None)  # a whole head
    plan = [json.loads(b) for b in parts.plan] or parsed.pop("plan", None) or []  # or in the head
    if window is None:
        order = [t.key for t in taskset.tasks if t.key in parts.tasks]
        states = _states(parts, order, seen) if order else whole_tasks or {}
        ordered = ",".join(parts.batches[i] for i in sorted(parts.batches, key=int))
        batches: list[Any] = _BATCHES.validate_json(f"[{ordered}]") if ordered else whole_batches or []
    else:
        states = _states(parts, list(parts.tasks), None)
        batches = [UNREAD] * window.count
        for i, raw in parts.batches.items():
            batches[int(i)] = BatchRecord.model_validate_json(raw)
    # The parts come validated (from their JSON, in one pass each: twice as fast as json.loads and
    # validating the objects), and pydantic keeps model instances as they are.
    record = RunRecord.model_validate(
        {**parsed, "taskset": taskset, "usage": usage, "tasks": states, "batches": batches, "plan": plan}
    )
    count = len(record.batches)
    for state in record.tasks.values():  # a passed task is on the integration branch since its batch
        if state.status is TaskStatus.passed and state.batch is not None and state.batch < count:
            state.merged_sha = record.batches[state.batch].merged_sha
    record._window = window is not None
    return record


def write(
    pipe: Any, run_id: str, parts: Parts, places: Mapping[str, int], before: Parts | None = None
) -> None:
    """Queue the writes of the parts that differ from `before` (all of them without it); `places` as
    for `read`."""
    if before is None or parts.head != before.head:
        pipe.set(keys.run_key(run_id), parts.head)
    plan = keys.plan_key(run_id)
    if before is not None and parts.plan == before.plan[1:] != before.plan:  # the first batch taken
        pipe.lpop(plan)
    elif before is None or parts.plan != before.plan:
        pipe.delete(plan)
        if parts.plan:
            pipe.rpush(plan, *parts.plan)
    if before is None or before.legacy:  # every part is written, in this layout
        if before is not None:
            pipe.delete(keys.tasks_key(run_id), keys.batches_key(run_id))
        before = Parts(None)  # its tasks and batches none, its buckets empty

    def task_bucket(key: str) -> str:
        return packed.task_bucket(key, places)

    for name, now, then, buckets, bucket_of in (
        (keys.states_key(run_id), parts.tasks, before.tasks, before.state_buckets, task_bucket),
        (keys.batch_records_key(run_id), parts.batches, before.batches, before.batch_buckets, _batch_bucket),
    ):
        if changed := _changed(now, then):
            pipe.hset(name, mapping=buckets.writes(changed, bucket_of))


def places(taskset: TaskSet) -> dict[str, int]:
    """Each task's place in the task set, which picks its bucket (packed.task_bucket)."""
    return {t.key: i for i, t in enumerate(taskset.tasks)}


class TaskSets:
    """Each run's stored task set (without the pilot's tasks), parsed once per process with its tasks'
    places: it never changes. The last `size` runs' are kept."""

    def __init__(self, client: Any, size: int = 64) -> None:
        self.client, self.size = client, size
        self._kept: dict[str, tuple[TaskSet, dict[str, int]]] = {}

    def get(self, run_id: str) -> tuple[TaskSet, dict[str, int]]:
        kept = self._kept.get(run_id)
        if kept is None:
            stored = self.client.get(keys.taskset_key(run_id))
            if stored is None:
                raise InputError("run", run_id, "its task set is missing from the store")
            # An earlier version stored it as plain JSON.
            taskset = TaskSet.model_validate_json(
                stored if stored.startswith("{") else packed.unsqueeze(stored)
            )
            if len(self._kept) >= self.size:
                self._kept.pop(next(iter(self._kept)))
            kept = self._kept[run_id] = (taskset, places(taskset))
        return kept

    def forget(self, run_id: str) -> None:
        self._kept.pop(run_id, None)


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
