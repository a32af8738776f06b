"""cancel stops a run and its jobs; resume re-sends what a run lost, without redoing finished work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from celery import group

from otto_farm import chords, coordinator, recovery, taskset
from otto_farm.celery_app import app
from otto_farm.errors import InputError
from otto_farm.gitops import remote_heads
from otto_farm.models import BatchStatus, RunStatus, TaskStatus

from conftest import NO_GATE, gone_soon, wait_for, wait_for_run


def test_cancel_interrupts_running_jobs_and_dispatches_nothing_more(
    make_repo, write_taskset, store, worker, tmp_path
):
    pidfile, repo = tmp_path / "agent.pid", make_repo()
    loaded = taskset.load(
        write_taskset(
            {
                "repo": str(repo),
                "verify": "true",
                "sandbox": {"kind": "none"},  # the agent writes where the test reads: outside its worktree
                "agent": {"command": f"echo $$ > {pidfile}; sleep 60"},
                "tasks": [
                    {"key": "slow", "prompt": "p"},
                    {"key": "next", "prompt": "p", "depends_on": ["slow"]},
                ],
            }
        )
    )
    run_id = coordinator.start(store, loaded).run_id
    wait_for(pidfile.exists)
    agent_pid = int(pidfile.read_text())
    record = coordinator.cancel(store, run_id)
    assert record.status is RunStatus.cancelled
    assert {k: s.status for k, s in record.tasks.items()} == {
        "slow": TaskStatus.skipped,
        "next": TaskStatus.skipped,
    }
    assert gone_soon(agent_pid, within_s=30)  # the job saw the cancel mark and took its agent's group down
    wait_for(lambda: store.get(run_id).tasks["slow"].results != [])  # the job ended and reported
    assert store.get(run_id).tasks["slow"].results[0].error_code == "cancelled"
    # The batch's callback still fires; on a cancelled run it must merge and decide nothing (fails with
    # `finish_batch`'s run-status guard removed).
    callback = app.AsyncResult(f"{run_id}.b0.done")
    wait_for(lambda: callback.state == "SUCCESS")
    after = store.get(run_id)
    assert after.status is RunStatus.cancelled and len(after.batches) == 1
    assert after.batches[0].status is BatchStatus.running and after.tasks["slow"].status is TaskStatus.skipped
    assert "batch_merged" not in [e["kind"] for _, e in store.events(run_id)]
    assert remote_heads(str(repo)).get(after.integration_branch) == after.base_sha  # the gate's green base
    with pytest.raises(InputError, match="has already ended"):
        coordinator.cancel(store, run_id)


def test_resume_resends_a_lost_batch_without_rerunning_finished_tasks(
    make_repo, write_taskset, store, worker, tmp_path, monkeypatch, settings
):
    log = tmp_path / "runs.log"
    loaded = taskset.load(
        write_taskset(
            {
                "repo": str(make_repo()),
                **NO_GATE,
                "verify": "true",
                "sandbox": {"kind": "none"},  # the agent writes where the test reads: outside its worktree
                "agent": {
                    "command": f"echo $OTTO_FARM_TASK_KEY >> {log}; echo $RANDOM > $OTTO_FARM_TASK_KEY.txt"
                },
                "tasks": [
                    {"key": "a", "prompt": "p"},
                    {"key": "b", "prompt": "p"},
                    {"key": "c", "prompt": "p", "depends_on": ["a"]},
                ],
            }
        )
    )
    # The broker loses the first chord: it is recorded as dispatched but never sent.
    monkeypatch.setattr(chords, "chord", lambda header: lambda callback: None)
    run_id = coordinator.start(store, loaded).run_id
    monkeypatch.undo()
    # One of its jobs did run (say, before the loss) and stored its result.
    app.signature("otto_farm.run_task", args=(run_id, "a", 1, 0)).apply_async().get(timeout=30)
    assert recovery.resume(store, run_id) == "re-sent batch 1: 1 of 2 jobs to run"
    record = wait_for_run(store, run_id)
    assert record.status is RunStatus.passed
    assert sorted(log.read_text().split()) == ["a", "b", "c"]  # a ran once, not again on resume
    with pytest.raises(InputError, match="has already ended"):
        recovery.resume(store, run_id)
    for command in ("cancel", "resume"):
        proc = subprocess.run(
            [sys.executable, "-m", "otto_farm", command, run_id],
            capture_output=True,
            text=True,
            env={**os.environ, **settings.env()},
            timeout=60,
        )
        assert (
            proc.returncode == 2
            and proc.stderr.strip() == f"otto-farm: run: {run_id}: has already ended (passed)"
        )


def test_reconciler_advances_a_batch_whose_callback_never_fired(
    make_repo, write_taskset, store, worker, monkeypatch
):
    loaded = taskset.load(
        write_taskset(
            {
                "repo": str(make_repo()),
                **NO_GATE,
                "verify": "true",
                "agent": {"command": "touch $OTTO_FARM_TASK_KEY.txt"},
                "tasks": [
                    {"key": "a", "prompt": "p"},
                    {"key": "b", "prompt": "p"},
                    {"key": "c", "prompt": "p", "depends_on": ["a"]},
                ],
            }
        )
    )
    # The first batch's jobs run and store their results, but its chord callback is lost.
    monkeypatch.setattr(chords, "chord", lambda header: lambda callback: group(header).apply_async())
    run_id = coordinator.start(store, loaded).run_id
    record = wait_for_run(store, run_id)
    assert record.status is RunStatus.passed and len(record.batches) == 2
    kinds = [e["kind"] for _, e in store.events(run_id)]
    assert kinds.count("batch_reconciled") == 1 and kinds.count("batch_merged") == 2
