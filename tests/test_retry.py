"""`otto-farm retry RUN TASK --feedback …`: one task of an ended run again, merged into its branch."""

from __future__ import annotations

import json

from test_cli import otto

from otto_farm.gitops import git
from otto_farm.models import RunStatus

from conftest import wait_for_run

# The agent writes 42 only when its prompt carries the feedback; verify wants 42.
AGENT = (
    'if grep -q use-forty-two "$OTTO_FARM_PROMPT_FILE"; then N=42; else N=0; fi; '
    "echo $N > $OTTO_FARM_TASK_KEY.txt"
)


def one_run_each(repo, verify: str, tasks: list[dict]) -> dict:
    """A task set whose tasks get one attempt and one run, with AGENT, and no pilot."""
    return {
        "repo": str(repo),
        "max_attempts": 1,
        "max_task_runs": 1,
        "pilot": {"enabled": False},
        "verify": verify,
        "agent": {"command": AGENT},
        "tasks": tasks,
    }


def test_retry_with_feedback_merges_the_tasks_new_commit(
    make_repo, write_taskset, settings, worker, tmp_path
):
    repo = make_repo()
    tasks = [{"key": "a", "prompt": "p", "verify": "true"}, {"key": "b", "prompt": "p"}]
    path = write_taskset(one_run_each(repo, "grep -qx 42 b.txt", tasks))
    env = settings.env()
    first = otto("submit", str(path), cwd=tmp_path, env=env)
    assert first.returncode == 1, first.stdout + first.stderr  # b failed: its agent wrote 0
    run_id = first.stdout.split()[1].rstrip(":")
    branch = f"otto-farm/{run_id}/integration"
    assert git(["show", f"{branch}:a.txt"], cwd=repo) == "0\n"

    again = otto("retry", run_id, "b", "--feedback", "use-forty-two", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"run {run_id}: b again (run 2) on {branch}" in again.stdout
    assert "  ok b passed" in again.stdout and "batch 1: a, b" not in again.stdout  # only what came after
    assert git(["show", f"{branch}:b.txt"], cwd=repo) == "42\n"
    assert git(["show", f"{branch}:a.txt"], cwd=repo) == "0\n"  # on top of what was merged
    record = json.loads(otto("status", run_id, "--json", cwd=tmp_path, env=env).stdout)
    assert record["status"] == "passed" and record["tasks"]["b"]["status"] == "passed"
    assert record["tasks"]["b"]["guidance"] == "use-forty-two"
    assert record["integration_sha"] == git(["rev-parse", branch], cwd=repo).strip()


def test_retry_names_what_it_cannot_retry(make_repo, write_taskset, settings, worker, tmp_path):
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "verify": "true",
            "agent": {"command": "true"},
            "tasks": [{"key": "a", "prompt": "p"}],
        }
    )
    env = settings.env()
    run_id = otto("submit", str(path), cwd=tmp_path, env=env).stdout.split()[1].rstrip(":")
    unknown = otto("retry", run_id, "nope", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and unknown.stderr == f"otto-farm: task: nope: not in run {run_id}\n"
    missing = otto("retry", "no-such-run", "a", cwd=tmp_path, env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr


def test_a_retried_task_that_passes_brings_back_the_tasks_skipped_for_it(
    make_repo, write_taskset, settings, worker, store, tmp_path
):
    """`retry --no-wait` on a run whose failed task took its dependents down (b, then c after b): they
    are pending again, and run after the retried task once it passes."""
    repo = make_repo()
    tasks = [
        {"key": "a", "prompt": "p", "verify": "grep -qx 42 a.txt"},
        {"key": "b", "prompt": "p", "depends_on": ["a"]},
        {"key": "c", "prompt": "p", "depends_on": ["b"]},
        {"key": "d", "prompt": "p"},
    ]
    path = write_taskset(one_run_each(repo, "true", tasks))
    env = settings.env()
    first = otto("submit", str(path), cwd=tmp_path, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    run_id = first.stdout.split()[1].rstrip(":")
    before = store.get(run_id)
    assert [before.tasks[k].status.value for k in "abcd"] == ["failed", "skipped", "skipped", "passed"]

    again = otto("retry", run_id, "a", "--feedback", "use-forty-two", "--no-wait", cwd=tmp_path, env=env)
    assert (
        again.returncode == 0
        and again.stdout == f"run {run_id}: a again (run 2) on otto-farm/{run_id}/integration\n"
    )
    record = wait_for_run(store, run_id)
    assert record.status is RunStatus.passed, record.error
    assert [record.tasks[k].runs for k in "abcd"] == [2, 1, 1, 1]
    assert git(["show", f"otto-farm/{run_id}/integration:c.txt"], cwd=repo) == "0\n"
