"""The run store on a real Redis: a record in parts, one result per run, concurrent writers, log TTLs."""

from __future__ import annotations

import json
import threading

import pytest

from otto_farm import keys, packed, runparts
from otto_farm.errors import InputError
from otto_farm.models import BatchRecord, BatchStatus, RunRecord, TaskResult, TaskSpec, TaskStatus, Usage
from otto_farm.store import LOG_TTL_S, Store, new_run_id

from conftest import make_record


def stored_record(store: Store, n: int = 3) -> RunRecord:
    record = make_record([{"key": f"t{i}", "prompt": "p"} for i in range(n)], {})
    record.run_id = new_run_id()
    for state in record.tasks.values():
        state.status, state.runs = TaskStatus.running, 1
    store.create(record)
    return record


def stored(store: Store, name: str) -> dict[str, str]:
    """The values of a packed hash (packed.py), by id."""
    return {k: v for raw in store.redis.hgetall(name).values() for k, v in packed.unpack(raw).items()}


def result(record: RunRecord, key: str, status: TaskStatus = TaskStatus.passed) -> TaskResult:
    usage = Usage(input_tokens=10, cost_usd=0.25)
    return TaskResult(run_id=record.run_id, task_key=key, run_no=1, batch=0, status=status, usage=usage)


def test_the_run_key_holds_neither_the_task_set_nor_results(store):
    record = stored_record(store)
    store.add_result(result(record, "t0"))
    head = json.loads(store.redis.get(keys.run_key(record.run_id)))
    assert not {"taskset", "tasks", "batches", "usage"} & set(head)  # each has a key of its own
    states = {k: json.loads(v) for k, v in stored(store, keys.states_key(record.run_id)).items()}
    assert sorted(states) == ["t0", "t1", "t2"] and all("results" not in t for t in states.values())
    assert states["t0"]["status"] == "running"  # the batch callback folds the result in
    again = Store(store.redis).get(record.run_id)  # a fresh process: the task set read from its key
    assert again.taskset == record.taskset
    assert [r.task_key for r in again.tasks["t0"].results] == ["t0"]
    assert again.tasks["t0"].status is TaskStatus.passed  # read from its result
    assert again.usage == Usage(input_tokens=10, cost_usd=0.25)
    assert 0 < store.redis.ttl(keys.results_key(record.run_id)) <= LOG_TTL_S
    assert store.get(record.run_id, tasks=()).tasks["t0"].results == []


def test_an_update_writes_only_the_parts_it_changed(store):
    """Guards the record in parts (issue 17): a boundary that moves one task and adds a batch writes
    that task's bucket and that batch's, not the run (seen on the wire, with MONITOR); the states keep
    the task set's order when read back."""
    record = stored_record(store, n=4 * packed.TASKS_PER_BUCKET)

    def change(r: RunRecord) -> None:
        r.tasks["t3"].status = TaskStatus.passed
        r.batches.append(BatchRecord(index=0, tasks=["t3"], base_ref="main", base_sha="0" * 40))

    with store.redis.monitor() as monitor:
        after = store.update(record.run_id, change)
        sent: list[str] = []
        while not (sent and sent[-1].upper() == "EXEC"):
            sent.append(monitor.next_command()["command"])
    writes = [c.split(" ") for c in sent if c.upper().startswith(("HSET", "SET"))]
    assert [w[:3] for w in writes] == [
        ["HSET", keys.states_key(record.run_id), "0"],
        ["HSET", keys.batch_records_key(record.run_id), "0"],
    ]  # not the head (unchanged), nor the other tasks' buckets
    assert all(len(w) == 4 for w in writes)  # one bucket each (base64 has no space)
    assert len(store.redis.hget(keys.states_key(record.run_id), "0")) < 1024  # 64 states, compressed
    again = store.get(record.run_id)
    assert list(again.tasks) == [f"t{i}" for i in range(4 * packed.TASKS_PER_BUCKET)]
    assert again.batches == after.batches
    assert again.tasks["t3"].status is TaskStatus.passed
    assert store.job_view(record.run_id, "t3", 1, 0).batch.tasks == ["t3"]


def test_a_window_rewrites_the_buckets_it_read_and_starts_new_ones(store):
    """A boundary's window (runparts.Window) reads its batch's bucket and the last; the batch it opens
    may start a bucket of its own. Nothing else of the run is read or lost."""
    size = 2 * packed.BATCHES_PER_BUCKET
    record = stored_record(store, n=size + 1)
    batches = [BatchRecord(index=i, tasks=[f"t{i}"], base_ref="main", base_sha="0" * 40) for i in range(size)]
    store.update(record.run_id, lambda r: r.batches.extend(batches))

    def change(r: RunRecord) -> None:
        r.batches[5].status, r.tasks["t5"].status = BatchStatus.done, TaskStatus.passed
        r.batches.append(BatchRecord(index=size, tasks=[f"t{size}"], base_ref="main", base_sha="1" * 40))

    with store.redis.monitor() as monitor:
        store.update(record.run_id, change, window=runparts.Window(5))
        sent: list[str] = []
        while not (sent and sent[-1].upper() == "EXEC"):
            sent.append(monitor.next_command()["command"])
    whole = [f"HGETALL {keys.states_key(record.run_id)}", f"HGETALL {keys.batch_records_key(record.run_id)}"]
    assert not set(whole) & set(sent)  # no whole read
    assert store.redis.hlen(keys.batch_records_key(record.run_id)) == 3
    again = store.get(record.run_id)
    assert [b.index for b in again.batches] == list(range(size + 1))
    assert again.batches[5].status is BatchStatus.done and again.tasks["t5"].status is TaskStatus.passed
    assert all(again.batches[i] == batches[i] for i in range(size) if i != 5)
    assert again.batches[size].base_sha == "1" * 40


def test_a_reader_that_looks_again_parses_only_the_states_that_changed(store):
    """Guards `status --watch` at any size (issue 17): with `seen`, a second read hands back the same
    state objects where their stored JSON did not change, and parses the changed ones anew."""
    record = stored_record(store, n=20)
    seen = runparts.Seen()
    first = store.get(record.run_id, tasks=(), seen=seen)

    def change(r: RunRecord) -> None:
        r.tasks["t5"].status = TaskStatus.failed

    store.update(record.run_id, change)
    second = store.get(record.run_id, tasks=(), seen=seen)
    assert second.tasks["t5"].status is TaskStatus.failed and first.tasks["t5"].status is TaskStatus.running
    assert second.tasks["t5"] is not first.tasks["t5"]
    assert all(second.tasks[k] is first.tasks[k] for k in first.tasks if k != "t5")
    assert list(second.tasks) == list(first.tasks)


def test_a_run_stored_whole_by_an_earlier_version_is_read_and_split_at_its_next_update(store):
    record = make_record([{"key": f"t{i}", "prompt": "p"} for i in range(3)], {})
    record.run_id = new_run_id()
    record.batches.append(BatchRecord(index=0, tasks=["t1"], base_ref="main", base_sha="0" * 40))
    whole = record.model_dump_json(
        exclude={"taskset": True, "usage": True, "tasks": {"__all__": {"results"}}}
    )
    store.redis.set(keys.taskset_key(record.run_id), record.taskset.model_dump_json())
    store.redis.set(keys.run_key(record.run_id), whole)  # the layout before the record was in parts
    assert list(store.get(record.run_id).tasks) == ["t0", "t1", "t2"]
    assert store.job_view(record.run_id, "t1", 1, 0).batch.tasks == ["t1"]
    store.update(record.run_id, lambda r: setattr(r.tasks["t2"], "status", TaskStatus.skipped))
    assert "tasks" not in json.loads(store.redis.get(keys.run_key(record.run_id)))
    assert sorted(stored(store, keys.states_key(record.run_id))) == ["t0", "t1", "t2"]
    assert store.get(record.run_id).tasks["t2"].status is TaskStatus.skipped


def test_a_run_stored_a_field_a_task_by_an_earlier_version_is_read_and_packed_at_its_next_update(store):
    record = make_record([{"key": f"t{i}", "prompt": "p"} for i in range(3)], {})
    record.run_id = new_run_id()
    record.batches.append(BatchRecord(index=0, tasks=["t1"], base_ref="main", base_sha="0" * 40))
    parts = runparts.split(record)  # the layout before packed.py: a hash field a task and a batch
    store.redis.set(keys.taskset_key(record.run_id), record.taskset.model_dump_json())
    store.redis.hset(keys.tasks_key(record.run_id), mapping=parts.tasks)
    store.redis.hset(keys.batches_key(record.run_id), mapping=parts.batches)
    store.redis.set(keys.run_key(record.run_id), parts.head)
    assert list(store.get(record.run_id, window=runparts.Window(0)).tasks) == ["t0", "t1", "t2"]
    assert store.job_view(record.run_id, "t1", 1, 0).batch.tasks == ["t1"]
    store.update(record.run_id, lambda r: setattr(r.tasks["t2"], "status", TaskStatus.skipped))
    assert not store.redis.exists(keys.tasks_key(record.run_id), keys.batches_key(record.run_id))
    assert sorted(stored(store, keys.states_key(record.run_id))) == ["t0", "t1", "t2"]
    assert list(stored(store, keys.batch_records_key(record.run_id))) == ["0"]
    fresh = Store(store.redis)
    assert list(fresh.get(record.run_id, window=runparts.Window(0)).tasks) == ["t1"]  # packed: a window
    assert fresh.get(record.run_id).tasks["t2"].status is TaskStatus.skipped
    assert fresh.job_view(record.run_id, "t1", 1, 0).batch.tasks == ["t1"]


def test_the_first_result_of_a_run_wins(store):
    record = stored_record(store)
    first, second = result(record, "t1"), result(record, "t1", TaskStatus.failed)
    assert store.add_result(first) is first
    assert store.add_result(second) == first
    after = store.get(record.run_id)
    assert after.tasks["t1"].status is TaskStatus.passed and after.usage.cost_usd == 0.25
    finished = [e for _, e in store.events(record.run_id) if e["kind"] == "task_finished"]
    assert [(e["task"], e["status"], e["attempts"]) for e in finished] == [("t1", "passed", "0")]


def test_a_job_reads_its_task_batch_and_earlier_runs(store):
    record = make_record([{"key": f"t{i}", "prompt": "p"} for i in range(3)], {})
    record.run_id, record.learnings = new_run_id(), ["use src/"]
    record.batches = [BatchRecord(index=0, tasks=["t0", "t1"], base_ref="main", base_sha="a" * 40)]
    record.tasks["t1"].runs, record.tasks["t1"].guidance = 2, "try again"
    store.create(record)
    earlier = result(record, "t1", TaskStatus.failed)
    store.add_result(earlier)
    store.add_result(earlier.model_copy(update={"run_no": 3}))  # a later run's: not this job's business
    view = store.job_view(record.run_id, "t1", 2, 0)
    assert (view.repo, view.learnings, view.batch.base_sha) == (record.repo, ["use src/"], "a" * 40)
    assert view.taskset == record.taskset and view.state.guidance == "try again"
    assert [r.run_no for r in view.state.results] == [1] and view.state.result_of(2) is None
    assert not view.cancelled
    store.request_cancel(record.run_id)
    assert store.job_view(record.run_id, "t1", 2, 0).cancelled


def test_tasks_the_pilot_adds_are_seen_by_every_reader(store):
    record = stored_record(store)
    record.batches = [BatchRecord(index=0, tasks=["t0"], base_ref="main", base_sha="a" * 40)]
    store.update(record.run_id, lambda r: r.batches.extend(record.batches))
    fix = TaskSpec(key="fix", prompt="mend t0", depends_on=["t0"], verify="make check")
    store.update(record.run_id, lambda r: r.add_tasks([fix]))
    for reader in (store, Store(store.redis)):  # this process's cached task set, and a fresh one's
        after = reader.get(record.run_id)
        assert after.added_tasks == [fix] and after.tasks["fix"].status is TaskStatus.pending
        assert [t.key for t in after.taskset.tasks] == ["t0", "t1", "t2", "fix"]
        view = reader.job_view(record.run_id, "fix", 1, 0)
        assert view.taskset.verify_for("fix") == "make check" and view.state.key == "fix"
    assert len(store._taskset(record.run_id).tasks) == 3  # the stored set, written once, stays as it was
    assert "fix" not in packed.unsqueeze(store.redis.get(keys.taskset_key(record.run_id)))


def test_concurrent_writers_lose_nothing(store):
    record = stored_record(store, n=20)

    def save(key: str) -> None:
        store.add_result(result(record, key))
        store.update(record.run_id, lambda r: r.learnings.append(key), usage=Usage(output_tokens=1))

    threads = [threading.Thread(target=save, args=(key,)) for key in record.tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = store.get(record.run_id)
    assert all(s.status is TaskStatus.passed and len(s.results) == 1 for s in after.tasks.values())
    assert sorted(after.learnings) == sorted(record.tasks)
    assert after.usage == Usage(input_tokens=200, output_tokens=20, cost_usd=5.0)


def test_transcripts_are_kept_per_attempt_with_a_ttl(store):
    record = stored_record(store)
    store.put_transcript(record.run_id, "t0", 1, 2, [{"role": "assistant", "text": "hi"}])
    assert store.transcript(record.run_id, "t0", 1, 2) == [{"role": "assistant", "text": "hi"}]
    assert store.transcript(record.run_id, "t0", 1, 1) == []
    assert 0 < store.redis.ttl(keys.transcripts_key(record.run_id)) <= LOG_TTL_S


def test_an_unknown_run_is_an_input_error(store):
    with pytest.raises(InputError, match="no such run"):
        store.get("no-such-run")


def test_a_window_that_changes_the_plan_beyond_its_first_batch_writes_it_whole(store):
    """Guards the plan as a list (issue 17): a window reads the plan's first batch alone; taking it is
    one LPOP, and any other change of the plan is made again on the whole run (runparts.Unread)."""
    record = stored_record(store, n=6)
    store.update(record.run_id, lambda r: setattr(r, "plan", [["t0"], ["t1", "t2"], ["t3"]]))
    store.update(record.run_id, lambda r: r.plan.pop(0), window=runparts.Window(-1))
    assert store.redis.lrange(keys.plan_key(record.run_id), 0, -1) == ['["t1","t2"]', '["t3"]']
    seen: list[int] = []

    def reorder(r: RunRecord) -> None:
        seen.append(len(r.plan[1]))  # 0 in a window: a batch it did not read
        r.plan = [r.plan[1], r.plan[0]]

    store.update(record.run_id, reorder, window=runparts.Window(-1))
    assert seen == [0, 1]  # tried on the window, then made on the whole run
    assert store.get(record.run_id).plan == [["t3"], ["t1", "t2"]]
    assert "plan" not in json.loads(store.redis.get(keys.run_key(record.run_id)))


def test_a_plan_stored_in_the_head_by_an_earlier_version_moves_to_its_list_at_the_next_update(store):
    record = stored_record(store, n=3)
    head = json.loads(store.redis.get(keys.run_key(record.run_id)))
    store.redis.set(keys.run_key(record.run_id), json.dumps({**head, "plan": [["t1"], ["t2"]]}))
    store.redis.delete(keys.plan_key(record.run_id))
    assert store.get(record.run_id).plan == [["t1"], ["t2"]]
    store.update(record.run_id, lambda r: r.plan.pop(0), window=runparts.Window(-1))
    assert "plan" not in json.loads(store.redis.get(keys.run_key(record.run_id)))
    assert store.redis.lrange(keys.plan_key(record.run_id), 0, -1) == ['["t2"]']
