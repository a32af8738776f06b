"""The run's transition lock: a dead holder frees it in seconds, `cancel` never waits on it, and the
sweep never blocks on one run. (With a 900 s lease, a control worker killed mid-merge stalled its run
for 901 s and `otto-farm cancel` hung on the same lock.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from otto_farm import coordinator, keys, lease, recovery, taskset
from otto_farm.lease import LOCK_TTL_S, Lock
from otto_farm.models import RunStatus

from conftest import wait_for, wait_for_run

# A process that takes a run's lock and dies holding it, as a control worker's pool process killed
# mid-merge does: its heartbeat stops with it.
DIE_HOLDING = """
import os, signal, sys
from otto_farm.store import Store
Store.from_url(sys.argv[1]).lock(sys.argv[2]).__enter__()
print("held", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def die_holding(store, run_id: str, settings) -> None:
    url = settings.resolved_store_url
    proc = subprocess.run(
        [sys.executable, "-c", DIE_HOLDING, url, run_id],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.strip() == "held" and proc.returncode == -signal.SIGKILL, proc.stderr


def slow_set(repo, tmp_path) -> dict:
    started = tmp_path / "started"
    return {
        "repo": str(repo),
        "verify": "true",
        "sandbox": {"kind": "none"},  # the agent says it started where the test reads
        "agent": {"command": f"touch {started}; sleep 2; touch $OTTO_FARM_TASK_KEY.txt"},
        "tasks": [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p", "depends_on": ["a"]}],
    }


def test_a_dead_holders_lock_lapses_in_seconds_and_the_run_goes_on(
    make_repo, write_taskset, store, worker, settings, tmp_path
):
    """Fails with a lock that outlives its holder (900 s): the batch's callback would wait for it."""
    run_id = coordinator.start(store, taskset.load(write_taskset(slow_set(make_repo(), tmp_path)))).run_id
    wait_for(lambda: (tmp_path / "started").exists())
    die_holding(store, run_id, settings)  # the callback of batch 1 now meets a dead holder's lock
    killed_at = time.monotonic()
    record = wait_for_run(store, run_id, timeout_s=60)
    assert record.status is RunStatus.passed
    assert time.monotonic() - killed_at < 2 * LOCK_TTL_S + 15  # the lock's lapse, then the rest of the run
    kinds = [e["kind"] for _, e in store.events(run_id)]
    assert kinds.count("batch_merged") == 2  # each batch merged once


def test_cancel_answers_at_once_while_a_dead_holder_keeps_the_lock(
    make_repo, write_taskset, store, worker, settings, tmp_path
):
    run_id = coordinator.start(store, taskset.load(write_taskset(slow_set(make_repo(), tmp_path)))).run_id
    die_holding(store, run_id, settings)
    start = time.monotonic()
    assert coordinator.cancel(store, run_id).status is RunStatus.cancelled
    assert time.monotonic() - start < 5
    time.sleep(LOCK_TTL_S + 4)  # the batch ends and its callback gets the lock: it must not undo the cancel
    assert store.get(run_id).status is RunStatus.cancelled


def test_the_sweep_does_not_wait_on_a_run_whose_lock_is_held(
    make_repo, write_taskset, store, worker, tmp_path
):
    run_id = coordinator.start(store, taskset.load(write_taskset(slow_set(make_repo(), tmp_path)))).run_id
    wait_for(lambda: (tmp_path / "started").exists())
    held = Lock(store.redis, keys.batch_lock_key(run_id))  # a live holder, say a callback's long merge
    assert held.acquire(wait_s=5)
    try:
        wait_for(lambda: store.get(run_id).tasks["a"].results != [], timeout_s=30)
        start = time.monotonic()
        assert recovery.reconcile(store, worker.work_dir, run_id) is None  # busy: the next sweep
        assert time.monotonic() - start < 2
    finally:
        held.release()
    assert wait_for_run(store, run_id).status is RunStatus.passed


def test_one_heartbeat_thread_keeps_every_lease_and_lock_of_a_process(store):
    """Guards a job's fixed cost (issue 17): leases and locks share the process's heartbeat thread
    instead of starting one each, and every one of them is still kept past its time to live."""
    leases = [lease.Lease(store.redis, "beats", f"beats-job-{i}", ttl_s=0.6) for i in range(5)]
    assert all(held.acquire() for held in leases)
    lock = lease.Lock(store.redis, "otto-farm:test:beats-lock", ttl_s=0.6)
    assert lock.acquire(0)
    time.sleep(1.5)  # well past their time to live: only the heartbeats can have kept them
    assert all(lease.alive(store.redis, f"beats-job-{i}") for i in range(5))
    assert store.redis.exists("otto-farm:test:beats-lock")
    assert [t.name for t in threading.enumerate()].count("otto-farm heartbeats") == 1
    for held in leases:
        held.release()
    lock.release()
    assert not any(lease.alive(store.redis, f"beats-job-{i}") for i in range(5))
