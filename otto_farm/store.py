"""Run state in Redis: a run record per run, its task results and transcripts beside it, and events.

A record is stored in parts, so that each write costs what changed rather than the whole run: the task
set (written once), the usage counters (HINCRBY), the head, task states and batches (runparts.py;
updated atomically with WATCH/MULTI, each write only the parts that changed), each TaskResult in the
run's results hash, each attempt's transcript in the transcripts hash. A job stores its result without
touching the record: until its batch's callback folds it into the task's state, a task's status is
read from the result (`fill_results`). Results and transcripts are logs: their hashes expire
`LOG_TTL_S` after their last write.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import redis

from otto_farm import keys, lease, packed, redact, runparts, shell
from otto_farm.errors import Busy, InfrastructureError, InputError
from otto_farm.models import (
    BatchRecord,
    GateCheck,
    RunRecord,
    TaskResult,
    TaskSet,
    TaskSpec,
    TaskState,
    TaskStatus,
    Usage,
    with_tasks,
)

EVENTS_MAXLEN = 10_000
CANCEL_TTL_S = 7 * 24 * 3600  # long after any job of the run could still be running
LOG_TTL_S = 14 * 24 * 3600
LOCK_WAIT_S = 600.0  # a callback waits this long for another's merge before leaving the batch to the sweep
# add_result in one round trip: the first result of a run is kept, counted and announced, and its
# sandbox kind noted; a later one gets the kept one back. KEYS: results, usage, events, sandboxes.
# ARGV: field, result, ttl, events maxlen, sandbox kind ('' if none), the number of counters,
# counter/amount pairs, then the event's field/value pairs.
_ADD_RESULT = """
local kept = redis.call('hget', KEYS[1], ARGV[1])
if kept then return kept end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
if ARGV[5] ~= '' then redis.call('sadd', KEYS[4], ARGV[5]) end
local event = 7 + 2 * tonumber(ARGV[6])
for i = 7, event - 1, 2 do redis.call('hincrbyfloat', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('xadd', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, event))
return false
"""


def new_run_id() -> str:
    """Sorts by creation time; the random tail keeps two runs of one second apart."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _count(pipe: Any, name: str, usage: Usage) -> None:
    """Add `usage` to the usage counters in hash `name`, inside the caller's transaction."""
    for counter, value in usage.model_dump().items():
        if isinstance(value, float) and value:
            pipe.hincrbyfloat(name, counter, value)
        elif value:
            pipe.hincrby(name, counter, value)


def _field(key: str, run_no: int, attempt: int | str | None = None) -> str:
    return f"{key}#{run_no}" if attempt is None else f"{key}#{run_no}#{attempt}"


def _event(kind: str, fields: dict[str, Any]) -> dict[str, str]:
    entry = {"kind": kind, "ts": f"{time.time():.3f}"}
    entry.update({k: str(v) for k, v in fields.items() if v is not None})
    return cast(dict[str, str], redact.stored(entry))


def _redacted(result: TaskResult) -> TaskResult:
    """The result with no secret the worker knows in its text (outputs, errors, messages)."""
    data = result.model_dump(mode="json")
    clean = redact.stored(data)
    return result if clean == data else TaskResult.model_validate(clean)


class Store:
    """Run records and events on one Redis connection pool."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._tasksets = runparts.TaskSets(client)
        self._add_result = client.register_script(_ADD_RESULT)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=30))

    def ping(self) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise InfrastructureError(f"run store unreachable: {exc}") from exc

    def create(self, record: RunRecord) -> None:
        if self.redis.exists(keys.run_key(record.run_id)):
            raise InfrastructureError(f"run {record.run_id} exists already")
        # The head last: a reader that finds it finds the task set and the other parts too.
        with self.redis.pipeline() as pipe:
            pipe.set(keys.taskset_key(record.run_id), packed.squeeze(record.taskset.model_dump_json()))
            runparts.write(pipe, record.run_id, runparts.split(record), runparts.places(record.taskset))
            pipe.execute()
        self.redis.zadd(keys.runs_index_key(), {record.run_id: record.created_at.timestamp()})
        self.redis.sadd(keys.active_runs_key(), record.run_id)
        self.emit(record.run_id, "run_started", total=len(record.tasks))

    def get(
        self,
        run_id: str,
        tasks: Collection[str] | None = None,
        window: runparts.Window | None = None,
        seen: runparts.Seen | None = None,
    ) -> RunRecord:
        """The run record, with the results of `tasks` (default: every task's it holds); with `window`,
        a window of it (runparts.Window): what a batch boundary reads, at any size of run; with `seen`,
        parsing again only the task states that changed since the last read with it."""
        parts, usage, window = runparts.read(self.redis, run_id, window, lambda: self._places(run_id))
        record = self._join(run_id, parts, usage, window, seen)
        self.fill_results(record, record.tasks if tasks is None else tasks)
        return record

    def job_view(self, run_id: str, key: str, run_no: int, batch: int) -> runparts.JobView:
        """What run `run_no` of task `key` in batch `batch` needs to know, in one round trip: the head,
        its task's state and results, and its batch (the buckets that hold them: packed.py)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.run_key(run_id))
            pipe.hget(keys.states_key(run_id), packed.task_bucket(key, self._places(run_id)))
            pipe.hget(keys.batch_records_key(run_id), packed.batch_bucket(batch))
            pipe.hmget(keys.results_key(run_id), [_field(key, n) for n in range(1, run_no + 1)])
            pipe.exists(keys.cancel_key(run_id))
            raw, state_bucket, batch_bucket, results, cancelled = pipe.execute()
        head = runparts.head(run_id, raw)
        raw_state = packed.unpack(state_bucket).get(key) if state_bucket else None
        raw_batch = packed.unpack(batch_bucket).get(str(batch)) if batch_bucket else None
        if "tasks" in head:  # stored whole by an earlier version
            raw_state, raw_batch = json.dumps(head["tasks"][key]), json.dumps(head["batches"][batch])
        elif raw_state is None:  # or a field a task and batch, until the run's next update
            raw_state = cast(str | None, self.redis.hget(keys.tasks_key(run_id), key))
            raw_batch = cast(str | None, self.redis.hget(keys.batches_key(run_id), str(batch)))
        if raw_state is None or raw_batch is None:
            raise InputError("run", run_id, f"no task {key} in batch {batch + 1}")
        state = TaskState.model_validate({"key": key, **json.loads(raw_state)})
        state.results = [TaskResult.model_validate_json(r) for r in results if r is not None]
        return runparts.JobView(
            run_id=run_id,
            repo=head["repo"],
            taskset_dir=head["taskset_dir"],
            taskset=self._run_taskset(run_id, head),
            learnings=head["learnings"],
            batch=BatchRecord.model_validate_json(raw_batch),
            state=state,
            cancelled=bool(cancelled),
        )

    def fill_results(self, record: RunRecord, tasks: Collection[str]) -> None:
        """Load the stored results of these tasks into the record, and when each running one's job started.

        A running task whose current run has a result takes its status from it: the job is over,
        and the batch callback has not folded it into the record yet.
        """
        wanted = [(k, n) for k in tasks for n in range(1, record.tasks[k].runs + 1)]
        if not wanted:
            return
        running = [k for k in tasks if record.tasks[k].status is TaskStatus.running]
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.results_key(record.run_id), [_field(*w) for w in wanted])
            if running:  # HMGET needs a field
                pipe.hmget(
                    keys.started_key(record.run_id), [_field(k, record.tasks[k].runs) for k in running]
                )
            raws, *started = cast(list[list[str | None]], pipe.execute())
        for (key, _), raw in zip(wanted, raws, strict=True):
            if raw is not None:
                record.tasks[key].results.append(TaskResult.model_validate_json(raw))
        for key, start in zip(running, started[0] if started else [], strict=True):
            if start is not None:
                record.tasks[key].started_at = datetime.fromtimestamp(float(start), UTC)
        for key in tasks:
            state = record.tasks[key]
            current = state.result_of(state.runs)
            if state.status is TaskStatus.running and current is not None:
                state.status, state.reason, state.started_at = current.status, current.error, None
                state.error_code = current.error_code

    def _join(
        self,
        run_id: str,
        parts: runparts.Parts,
        usage: dict[str, str],
        window: runparts.Window | None = None,
        seen: runparts.Seen | None = None,
    ) -> RunRecord:
        taskset = self._run_taskset(run_id, runparts.head(run_id, parts.head))
        return runparts.join(parts, run_id, taskset, usage, window, seen)

    def _run_taskset(self, run_id: str, head: dict[str, Any]) -> TaskSet:
        """The task set as the run sees it: the stored one and the tasks the pilot added (in the head)."""
        added = [TaskSpec.model_validate(t) for t in head.get("added_tasks", ())]
        return with_tasks(self._taskset(run_id), added)

    def _places(self, run_id: str) -> dict[str, int]:
        return self._tasksets.get(run_id)[1]

    def _taskset(self, run_id: str) -> TaskSet:
        """The run's task set as stored (without the pilot's tasks)."""
        return self._tasksets.get(run_id)[0]

    def update(
        self,
        run_id: str,
        change: Callable[[RunRecord], None],
        usage: Usage | None = None,
        window: runparts.Window | None = None,
    ) -> RunRecord:
        """Apply `change` to the record under WATCH/MULTI, retrying on a concurrent write.

        `change` may run more than once, so it must only touch the record it is given. It sees no task
        results (they are stored apart, by `add_result`), and neither does the record returned. The
        run's usage is counted apart: `usage` is added to it in the same transaction. With `window`,
        `change` is given a window of the record, and the whole one if it needs it (runparts.Unread).
        """
        usage_key = keys.usage_key(run_id)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    # Read after WATCH (on other connections: one round trip each): a write that
                    # lands after the read fails the EXEC below, and the change runs again.
                    pipe.watch(*runparts.names(run_id), usage_key)
                    before, counters, read = runparts.read(
                        self.redis, run_id, window, lambda: self._places(run_id)
                    )
                    record = self._join(run_id, before, counters, read)
                    try:
                        change(record)
                        parts = runparts.split(record)
                        runparts.check(parts, before, run_id, self._places(run_id))
                    except runparts.Unread:
                        window = None
                        continue
                    pipe.multi()
                    runparts.write(pipe, run_id, parts, self._places(run_id), before)
                    if usage is not None:
                        _count(pipe, usage_key, usage)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def add_result(self, result: TaskResult) -> TaskResult:
        """Store a result once per (task, run), count its usage and emit `task_finished`, in one step;
        the first stored wins and is returned. What is stored and returned has its secrets redacted."""
        result = _redacted(result)
        counters = [(k, v) for k, v in result.usage.model_dump().items() if v]
        event = _event(
            "task_finished",
            {
                "task": result.task_key,
                "batch": result.batch,
                "status": result.status.value,
                "attempts": len(result.attempts),
                "error": result.error_code,
                "cause": shell.first_line(result.error) or None,
                "duration_s": result.duration_s,
                "commit": result.commit_sha,
            },
        )
        kept = self._add_result(
            keys=[
                keys.results_key(result.run_id),
                keys.usage_key(result.run_id),
                keys.events_key(result.run_id),
                keys.sandboxes_key(result.run_id),
            ],
            args=[
                _field(result.task_key, result.run_no),
                result.model_dump_json(),
                LOG_TTL_S,
                EVENTS_MAXLEN,
                result.sandbox or "",
                len(counters),
                *(x for pair in counters for x in pair),
                *(x for pair in event.items() for x in pair),
            ],
        )
        return result if kept is None else TaskResult.model_validate_json(kept)

    def add_gate_check(self, check: GateCheck) -> GateCheck:
        """Store a gate check once per (batch, round, label); the first stored wins and is returned."""
        name, field = keys.gates_key(check.run_id), _field(str(check.batch), check.round, check.label)
        clean = redact.stored(check.model_dump(mode="json"))
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(name, field, json.dumps(clean))
            pipe.hget(name, field)
            pipe.expire(name, LOG_TTL_S)
            _, kept, _ = pipe.execute()
        return GateCheck.model_validate_json(kept)

    def gate_checks(
        self, run_id: str, batch: int, round: int, labels: Collection[str]
    ) -> dict[str, GateCheck]:
        """The stored checks of these labels in one gate round."""
        fields = [_field(str(batch), round, label) for label in labels]
        raws = cast(list[str | None], self.redis.hmget(keys.gates_key(run_id), fields)) if fields else []
        return {
            label: GateCheck.model_validate_json(raw)
            for label, raw in zip(labels, raws, strict=True)
            if raw is not None
        }

    def put_transcript(
        self, run_id: str, key: str, run_no: int, attempt: int, entries: list[dict[str, Any]]
    ) -> None:
        name = keys.transcripts_key(run_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(name, _field(key, run_no, attempt), json.dumps(redact.redactor().data(entries)))
            pipe.expire(name, LOG_TTL_S)
            pipe.execute()

    def task_started(self, run_id: str, key: str, run_no: int, batch: int, worker: str) -> None:
        """Note when a job started (`status` shows how long it has run) and emit `task_started`."""
        name = keys.started_key(run_id)
        entry: Any = _event("task_started", {"task": key, "batch": batch, "run": run_no, "worker": worker})
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(name, _field(key, run_no), f"{time.time():.3f}")
            pipe.expire(name, LOG_TTL_S)
            pipe.xadd(keys.events_key(run_id), entry, maxlen=EVENTS_MAXLEN, approximate=True)
            pipe.execute()

    def transcript(self, run_id: str, key: str, run_no: int, attempt: int) -> list[dict[str, Any]]:
        raw = cast(str | None, self.redis.hget(keys.transcripts_key(run_id), _field(key, run_no, attempt)))
        return cast(list[dict[str, Any]], json.loads(raw)) if raw else []

    def sandboxes(self, run_id: str) -> list[str]:
        """The sandbox kinds the run's jobs ran in, as their results said."""
        return sorted(cast(set[str], self.redis.smembers(keys.sandboxes_key(run_id))))

    def run_ids(self, limit: int = 50) -> list[str]:
        return cast(list[str], self.redis.zrevrange(keys.runs_index_key(), 0, limit - 1))

    def active_runs(self) -> list[str]:
        """Runs the reconciler looks after: those not yet seen ended."""
        return sorted(cast(set[str], self.redis.smembers(keys.active_runs_key())))

    def retire(self, run_id: str) -> None:
        self.redis.srem(keys.active_runs_key(), run_id)

    def emit(self, run_id: str, kind: str, **fields: Any) -> None:
        entry: Any = _event(kind, fields)
        self.redis.xadd(keys.events_key(run_id), entry, maxlen=EVENTS_MAXLEN, approximate=True)

    def events(
        self, run_id: str, after: str = "0", block_ms: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        """Events after the id `after`; with `block_ms`, wait that long for the first new one."""
        reply = cast(list[Any], self.redis.xread({keys.events_key(run_id): after}, block=block_ms))
        return [(eid, data) for _, entries in reply for eid, data in entries] if reply else []

    def request_cancel(self, run_id: str) -> None:
        self.redis.set(keys.cancel_key(run_id), "1", ex=CANCEL_TTL_S)

    def cancel_requested(self, run_id: str) -> bool:
        return bool(self.redis.exists(keys.cancel_key(run_id)))

    @contextmanager
    def lock(self, run_id: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
        """Hold the run's transition lock for the block (lease.Lock: a dead holder's lapses in seconds);
        Busy if another holder keeps it past `wait_s` (0: the sweep, which never waits on one run)."""
        held = lease.Lock(self.redis, keys.batch_lock_key(run_id))
        if not held.acquire(wait_s):
            raise Busy(f"run {run_id}: another transition holds its lock")
        try:
            yield
        finally:
            held.release()

    def forget(self, run_id: str) -> None:
        """Remove every key of the run (`otto-farm:run:<id>` and `…:<id>:*`) and its index entries."""
        literal = "".join(f"\\{c}" if c in "*?[]\\" else c for c in run_id)  # a glob matching the id alone
        names = [keys.run_key(run_id), *self.redis.scan_iter(match=f"{keys.run_key(literal)}:*", count=1000)]
        with self.redis.pipeline() as pipe:
            pipe.delete(*names)
            pipe.zrem(keys.runs_index_key(), run_id)
            pipe.srem(keys.active_runs_key(), run_id)
            pipe.execute()
        self._tasksets.forget(run_id)
