"""Redelivered jobs and callbacks: nothing runs twice, nothing merges twice."""

from __future__ import annotations

from otto_farm import coordinator
from otto_farm.celery_app import app
from otto_farm.gitops import git
from otto_farm.models import BatchStatus, RunRecord, RunStatus, TaskStatus

from conftest import wait_for_run

TASKS = {
    "verify": "true",
    "agent": {"command": "echo $OTTO_FARM_TASK_KEY-$RANDOM > $OTTO_FARM_TASK_KEY.txt"},
    "tasks": [{"key": "a", "prompt": "a"}, {"key": "b", "prompt": "b"}],
}


def commit_count(repo, ref: str) -> int:
    return int(git(["rev-list", "--count", ref], cwd=repo))


def test_redelivered_run_task_returns_the_stored_result(make_repo, write_taskset, run_taskset, store):
    repo = make_repo()
    record = run_taskset(write_taskset({"repo": str(repo), **TASKS}))
    stored = record.tasks["a"].results[0]
    branch_sha = git(["rev-parse", stored.branch], cwd=repo).strip()
    again = app.signature("otto_farm.run_task", args=(record.run_id, "a", 1, 0)).apply_async().get(timeout=30)
    assert again["commit_sha"] == stored.commit_sha
    # What the chord gets leaves the logs in the store: they would travel again in every message.
    assert stored.attempts and not {"attempts", "verify_tail", "diff_stat"} & again.keys()
    # The agent writes random content: had it run again, the branch would have moved.
    assert git(["rev-parse", stored.branch], cwd=repo).strip() == branch_sha
    assert len(store.get(record.run_id).tasks["a"].results) == 1


def test_redelivered_callback_does_not_merge_twice(make_repo, write_taskset, run_taskset, store):
    repo = make_repo()
    record = run_taskset(write_taskset({"repo": str(repo), **TASKS}))
    results = [s.results[0].model_dump(mode="json") for s in record.tasks.values()]
    head_before = record.integration_sha
    app.signature("otto_farm.batch_done", args=(results, record.run_id, 0)).apply_async().get(timeout=30)
    after = store.get(record.run_id)
    assert after.integration_sha == head_before
    assert git(["rev-parse", record.integration_branch], cwd=repo).strip() == head_before
    assert len(after.batches) == 1


def test_callback_redelivered_after_its_push_but_before_its_record_finds_the_work_merged(
    make_repo, write_taskset, run_taskset, store, worker
):
    repo = make_repo()
    record = run_taskset(write_taskset({"repo": str(repo), **TASKS}))
    commits = commit_count(repo, record.integration_branch)

    def forget_the_end(r: RunRecord) -> None:  # as if the first delivery died right after pushing
        r.batches[0].status, r.status = BatchStatus.running, RunStatus.running
        for state in r.tasks.values():
            state.status = TaskStatus.passed

    store.update(record.run_id, forget_the_end)
    results = [s.results[0].model_dump(mode="json") for s in record.tasks.values()]
    coordinator.finish_batch(store, worker.work_dir, record.run_id, 0, results)
    after = wait_for_run(store, record.run_id)
    assert after.status is RunStatus.passed
    assert after.integration_sha == record.integration_sha
    assert commit_count(repo, record.integration_branch) == commits
