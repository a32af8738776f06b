"""Redelivered jobs and callbacks: nothing runs twice, nothing merges twice."""

from __future__ import annotations

from otto_farm import coordinator, taskset
from otto_farm.celery_app import app
from otto_farm.gitops import git
from otto_farm.models import BatchStatus, RunRecord, RunStatus, TaskStatus

from conftest import wait_for, wait_for_run

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
    """Without the gate: the callback merges into the integration branch itself. (With it, the merge
    goes to a candidate the gate checks, and the integration branch moves in gating.py.)"""
    repo = make_repo()
    record = run_taskset(write_taskset({"repo": str(repo), **TASKS, "gate": {"enabled": False}}))
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


def test_callback_redelivered_while_the_run_goes_on_changes_nothing(
    make_repo, write_taskset, store, worker, tmp_path
):
    """Batch 0's callback delivered again while batch 1 runs: it must neither merge nor decide again.

    Fails with `finish_batch`'s batch-status guard removed: the replay concludes batch 0 a second time,
    which ends the run `failed` (or opens a batch) while `slow` still runs.
    """
    started = tmp_path / "slow.started"
    repo = make_repo()
    loaded = taskset.load(
        write_taskset(
            {
                "repo": str(repo),
                "verify": "true",
                "agent": {"command": "echo $OTTO_FARM_TASK_KEY-$RANDOM > $OTTO_FARM_TASK_KEY.txt"},
                "sandbox": {"kind": "none"},  # the agent writes where the test reads: outside its worktree
                "tasks": [
                    {"key": "a", "prompt": "a"},
                    {
                        "key": "slow",
                        "prompt": "after a",
                        "depends_on": ["a"],
                        "agent": {"command": f"touch {started}; sleep 8; echo done > slow.txt"},
                    },
                ],
            }
        )
    )
    run_id = coordinator.start(store, loaded).run_id
    wait_for(started.exists)
    before = store.get(run_id)
    assert before.status is RunStatus.running and before.batches[0].status is BatchStatus.done
    results = [before.tasks["a"].results[0].model_dump(mode="json")]
    app.signature("otto_farm.batch_done", args=(results, run_id, 0)).apply_async().get(timeout=30)
    during = store.get(run_id)
    assert during.status is RunStatus.running and len(during.batches) == 2
    assert during.batches[0].model_dump() == before.batches[0].model_dump()
    assert during.tasks["slow"].status is TaskStatus.running
    record = wait_for_run(store, run_id)
    assert record.status is RunStatus.passed and len(record.batches) == 2
    kinds = [e["kind"] for _, e in store.events(run_id)]
    assert kinds.count("batch_merged") == 2 and kinds.count("decision") == 2
    # a's branch merged once: one merge commit per task on top of the base commit.
    assert commit_count(repo, record.integration_branch) == 1 + 2 * 2
