"""Leases and the reconciler: two deliveries of a job run its agent once; a dead worker's job is redone."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from otto_farm import chords, coordinator, keys, taskrun, taskset
from otto_farm.celery_app import TASKS_QUEUE, app
from otto_farm.lease import Lease, alive, claims
from otto_farm.models import BatchRecord, BatchStatus, RunStatus, TaskState, TaskStatus
from otto_farm.scripted_server import ScriptedReply
from otto_farm.store import new_run_id

from conftest import NO_GATE, gone_soon, make_record, run_by_hand, start_worker, wait_for, wait_for_run

JOB = "lease-run.b0.a.r1"


def test_one_delivery_holds_a_lease_and_its_heartbeat_keeps_it(store):
    first, second = Lease(store.redis, "lease-run", JOB, 0.6), Lease(store.redis, "lease-run", JOB, 0.6)
    assert first.acquire()
    time.sleep(1.5)  # well past its time to live: only the heartbeat can have kept it
    assert not second.acquire()
    assert alive(store.redis, JOB) and claims(store.redis, "lease-run") == {JOB}
    first.release()
    assert not alive(store.redis, JOB) and claims(store.redis, "lease-run") == set()
    assert second.acquire()
    second.release()


def test_a_holder_whose_lease_lapsed_and_was_taken_over_learns_it_lost(store):
    first, second = Lease(store.redis, "lease-run", JOB, 0.6), Lease(store.redis, "lease-run", JOB, 0.6)
    assert first.acquire()
    store.redis.delete(keys.lease_key(JOB))  # as if it lapsed in a long pause
    assert second.acquire()
    assert first.lost.wait(2)
    first.release()  # leaves the new holder's lease and claim alone
    assert alive(store.redis, JOB) and claims(store.redis, "lease-run") == {JOB}
    second.release()


def agent_taskset(log, keys_: list[str], sleep_s: float) -> dict:
    return {
        "verify": "true",
        "sandbox": {"kind": "none"},  # the agent writes where the test reads: outside its worktree
        "agent": {
            "command": f"echo $OTTO_FARM_TASK_KEY >> {log}; sleep {sleep_s}; touch $OTTO_FARM_TASK_KEY.txt"
        },
        "tasks": [{"key": k, "prompt": k} for k in keys_],
    }


def test_a_second_delivery_while_the_first_runs_waits_for_its_result(
    make_repo, write_taskset, store, settings, worker, tmp_path
):
    log = tmp_path / "agent.log"
    loaded = taskset.load(write_taskset({"repo": str(make_repo()), **agent_taskset(log, ["a"], 3)}))
    other = start_worker(settings, "second", concurrency=1, queues=(TASKS_QUEUE,))
    try:
        run_id = coordinator.start(store, loaded).run_id
        wait_for(log.exists)
        # What Redis does with a message unacked past its visibility timeout: deliver it again.
        again = app.signature("otto_farm.run_task", args=(run_id, "a", 1, 0), queue=TASKS_QUEUE).apply_async()
        result = again.get(timeout=60)
        record = wait_for_run(store, run_id)
    finally:
        other.stop()
    assert record.status is RunStatus.passed
    assert log.read_text().split() == ["a"]  # the agent ran once
    assert result["commit_sha"] == record.tasks["a"].results[0].commit_sha
    assert len(record.tasks["a"].results) == 1


def test_a_killed_workers_job_is_sent_again_and_the_run_completes(
    make_repo, write_taskset, store, settings, worker, tmp_path
):
    log = tmp_path / "agent.log"
    repo = make_repo()
    tasks = ["a", "b", "c", "d"]
    loaded = taskset.load(write_taskset({"repo": str(repo), **agent_taskset(log, tasks, 2)}))
    doomed = start_worker(settings, "doomed", concurrency=1, queues=(TASKS_QUEUE,))
    try:
        run_id = coordinator.start(store, loaded).run_id

        def started_on_doomed() -> str | None:
            return next((e["task"] for _, e in store.events(run_id) if "doomed" in e.get("worker", "")), None)

        wait_for(lambda: started_on_doomed() is not None)
        killed = started_on_doomed()
        os.killpg(doomed.proc.pid, signal.SIGKILL)  # the whole machine goes: main process and pool
        doomed.proc.wait()
        record = wait_for_run(store, run_id, timeout_s=60)
    finally:
        doomed.stop()
    assert record.status is RunStatus.passed
    for key in tasks:
        state = record.tasks[key]
        assert state.status is TaskStatus.passed and len(state.results) == 1, key
        assert state.merged_sha == record.integration_sha
    assert "doomed" not in record.tasks[killed].results[0].worker  # redone elsewhere
    resent = [e["task"] for _, e in store.events(run_id) if e["kind"] == "job_resent"]
    assert resent == [killed]
    runs = log.read_text().split()
    assert all(runs.count(key) == 1 for key in tasks if key != killed)  # only the lost one ran again


def test_a_job_celery_killed_at_its_hard_time_limit_ends_as_an_error_and_the_run_goes_on(
    make_repo, write_taskset, store, worker, tmp_path, monkeypatch
):
    """Celery really kills the job's pool process at its hard limit, inside the batch's real chord.

    The chord's callback then never fires (a header job failed); the sweep finds the job claimed with
    no lease and Celery's FAILURE, and stores `job_killed` rather than sending it again (fails with
    that check in `recovery.reconcile` removed: the job is sent again and killed again, forever).
    """
    pidfile, timeout_s = tmp_path / "stuck.pid", 60
    data = {
        "repo": str(make_repo()),
        **NO_GATE,
        "max_task_runs": 1,
        "timeout_s": timeout_s,
        "verify": "true",
        "agent": {"command": "touch $OTTO_FARM_TASK_KEY.txt"},
        "tasks": [
            {"key": "stuck", "prompt": "p", "agent": {"command": f"echo $$ > {pidfile}; sleep {timeout_s}"}},
            {"key": "ok", "prompt": "p"},
        ],
    }
    # A hard limit of 3 s with no soft limit before it: a job stuck where the soft limit cannot reach.
    monkeypatch.setattr(chords, "time_limits", lambda timeout_s: (None, 3))
    run_id = coordinator.start(store, taskset.load(write_taskset(data))).run_id
    monkeypatch.undo()
    try:
        record = wait_for_run(store, run_id, timeout_s=60)
    finally:
        with contextlib.suppress(OSError, ValueError):  # unsandboxed, its agent would outlive the kill
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    assert record.status is RunStatus.failed
    [result] = record.tasks["stuck"].results
    assert result.error_code == "job_killed" and "TimeLimitExceeded" in (result.error or "")
    assert record.tasks["ok"].merged_sha == record.integration_sha
    assert "job_resent" not in [e["kind"] for _, e in store.events(run_id)]


def test_a_pilot_job_celery_killed_leaves_the_decision_to_the_replan(
    store, worker, pilot_server, monkeypatch
):
    """Celery really kills the pilot job at its hard limit while the model is slow to answer: the job
    keeps its claim, and the sweep lets the replan decide instead of asking again into the same limit.
    """
    failed = TaskState(key="a", status=TaskStatus.failed, batch=0, runs=1)
    record = make_record([{"key": "a", "prompt": "p"}], {"a": failed}, max_task_runs=1)
    record.run_id = new_run_id()
    record.batches = [BatchRecord(index=0, tasks=["a"], base_ref="main", base_sha="0" * 40)]
    record.batches[0].status = BatchStatus.deciding
    store.create(record)
    pilot_server.script(ScriptedReply(tool_input={}, delay_s=30))
    monkeypatch.setattr(chords, "time_limits", lambda timeout_s: (None, 3))
    chords.send_pilot(record, 0)
    monkeypatch.undo()
    after = wait_for_run(store, record.run_id, timeout_s=30)
    assert after.status is RunStatus.failed
    entry = after.batches[0].pilot
    assert entry is not None and entry.outcome == "fallback_replan"
    assert "TimeLimitExceeded" in (entry.error or "")
    assert len(pilot_server.requests) == 1
    assert "pilot_resent" not in [e["kind"] for _, e in store.events(record.run_id)]


def test_a_callback_that_fires_before_every_result_is_in_waits_for_the_sweep(
    make_repo, write_taskset, store, worker, tmp_path
):
    log, go = tmp_path / "agent.log", tmp_path / "go"
    data = {"repo": str(make_repo()), **agent_taskset(log, ["a"], 0)}
    # `slow` runs until the test lets it end (30 s at most), however slow the machine is.
    wait = f"for i in $(seq 600); do [ -e {go} ] && break; sleep 0.05; done; touch slow.txt"
    data["tasks"].append({"key": "slow", "prompt": "p", "agent": {"command": wait}})
    run_id = coordinator.start(store, taskset.load(write_taskset(data))).run_id
    wait_for(lambda: store.get(run_id).tasks["a"].results != [])
    # As when a duplicate delivery of `a` counted twice: the callback fires with `slow` still running.
    early = [store.get(run_id).tasks["a"].results[0].model_dump(mode="json")]
    app.signature("otto_farm.batch_done", args=(early, run_id, 0)).apply_async().get(timeout=30)
    go.touch()
    record = wait_for_run(store, run_id)
    assert record.status is RunStatus.passed
    assert all(s.merged_sha == record.integration_sha for s in record.tasks.values())
    kinds = [e["kind"] for _, e in store.events(run_id)]
    assert kinds.count("callback_early") == 1 and kinds.count("batch_merged") == 1


def test_a_holder_whose_lease_was_taken_over_stops_its_commands_and_discards_its_result(
    make_repo, write_taskset, store, tmp_path
):
    """Its lease lapsed (a long pause) and another delivery took the job over: the first one must kill
    its agent and store nothing, so that the other's result is the one that counts.

    Fails with either behaviour of `taskrun` removed: the lease's `lost` in the job's stop check (the
    agent keeps running), or the `lease.lost` check before `add_result` (the first result is stored).
    """
    pidfile = tmp_path / "agent.pid"
    data = {
        "repo": str(make_repo()),
        "verify": "true",
        "sandbox": {"kind": "none"},  # the agent writes where the test reads: outside its worktree
        **NO_GATE,
        "agent": {"command": f"echo $$ > {pidfile}; sleep 30; touch late.txt"},
        "tasks": [{"key": "a", "prompt": "p"}],
    }
    # The run's end cancels it before the pool waits for its job: failed early, the agent is stopped.
    with ThreadPoolExecutor(1) as pool, run_by_hand(store, write_taskset(data)) as run_id:
        jid = taskrun.job_id(run_id, 0, "a", 1)
        first = pool.submit(taskrun.run, store, tmp_path / "work", run_id, "a", 1, 0, "first", lease_s=0.6)
        wait_for(pidfile.exists)
        store.redis.set(keys.lease_key(jid), "another delivery", px=60_000)  # it lapsed; another took it
        assert gone_soon(int(pidfile.read_text()), within_s=5)  # its agent was stopped
        time.sleep(1.5)  # time enough to store a result, were it going to
        assert store.job_view(run_id, "a", 1, 0).state.result_of(1) is None
        other = taskrun.error_result(run_id, "a", 1, 0, "other", error_code="other")
        store.add_result(other)  # the delivery that took over finishes
        store.redis.delete(keys.lease_key(jid))
        assert first.result(timeout=10).worker == "other"  # the first one returns the other's result
    assert store.job_view(run_id, "a", 1, 0).state.result_of(1).worker == "other"


@pytest.mark.filterwarnings("ignore:Call to deprecated setex")  # inside Celery's Redis backend
def test_a_job_that_failed_for_a_lost_store_runs_again_without_spending_a_task_run(
    make_repo, write_taskset, store, worker, monkeypatch
):
    """What a Redis blip can leave: the job claimed, its lease gone, Celery's FAILURE a ConnectionError
    (not a time limit). The sweep must send it again (fails if every FAILURE counts as a killed job:
    the task then ends `job_killed`, its only run spent)."""
    data = {
        "repo": str(make_repo()),
        **NO_GATE,
        "max_task_runs": 1,
        "verify": "true",
        "agent": {"command": "touch $OTTO_FARM_TASK_KEY.txt"},
        "tasks": [{"key": "lost", "prompt": "p"}],
    }
    monkeypatch.setattr(chords, "chord", lambda header: lambda callback: None)  # its message was lost too
    run_id = coordinator.start(store, taskset.load(write_taskset(data))).run_id
    monkeypatch.undo()
    jid = taskrun.job_id(run_id, 0, "lost", 1)
    store.redis.sadd(keys.claims_key(run_id), jid)
    app.backend.mark_as_failure(jid, redis.ConnectionError("Connection closed by server."))
    record = wait_for_run(store, run_id, timeout_s=60)
    assert record.status is RunStatus.passed
    [result] = record.tasks["lost"].results
    assert result.status is TaskStatus.passed and record.tasks["lost"].runs == 1
    assert [e["task"] for _, e in store.events(run_id) if e["kind"] == "job_resent"] == ["lost"]
