"""Whole runs on a real Redis, real Celery worker processes and real git repositories."""

from __future__ import annotations

from otto_farm.gitops import git
from otto_farm.models import RunStatus, TaskStatus

from conftest import a_then_b_and_c, branch_files


def write_file_agent(name: str, text: str) -> dict[str, str]:
    return {"command": f"mkdir -p $(dirname {name}) && printf '{text}' > {name}"}


def test_all_pass_in_dependency_order(make_repo, write_taskset, run_taskset):
    repo = make_repo()
    path = write_taskset(a_then_b_and_c(repo))
    record = run_taskset(path)
    assert record.status is RunStatus.passed
    assert [b.tasks for b in record.batches] == [["a"], ["b", "c"]]
    assert all(s.status is TaskStatus.passed and s.merged_sha for s in record.tasks.values())
    # b's verify needs a.txt: it ran on the integration head that already held a's merge.
    files = branch_files(repo, record.integration_branch)
    assert {"a.txt", "b.txt", "c.txt", "README.md"} <= files
    assert git(["rev-parse", record.integration_branch], cwd=repo).strip() == record.integration_sha
    assert git(["rev-parse", "main"], cwd=repo).strip() == record.base_sha  # the base is untouched


def test_failed_task_is_retried_in_a_later_batch_with_its_own_verify_output(
    make_repo, write_taskset, run_taskset
):
    repo = make_repo()
    # Fails verify unless its prompt carries retry guidance; keeps its prompt to show what it was told.
    agent = (
        'cp "$OTTO_FARM_PROMPT_FILE" prompt-$OTTO_FARM_TASK_KEY.md; '
        'if grep -q "## Retry guidance" "$OTTO_FARM_PROMPT_FILE"; then echo good > flaky.txt; '
        "else echo bad > flaky.txt; fi"
    )
    path = write_taskset(
        {
            "repo": str(repo),
            "max_attempts": 1,
            "verify": "grep -q good flaky.txt || (echo 'flaky.txt says bad, expected good'; exit 1)",
            "agent": {"command": agent},
            "tasks": [
                {"key": "flaky", "prompt": "write flaky.txt"},
                {
                    "key": "after",
                    "prompt": "after flaky",
                    "depends_on": ["flaky"],
                    "agent": {"command": "touch after.txt"},
                    "verify": "test -f flaky.txt",
                },
            ],
        }
    )
    record = run_taskset(path)
    assert record.status is RunStatus.passed
    assert [b.tasks for b in record.batches] == [["flaky"], ["flaky"], ["after"]]
    flaky = record.tasks["flaky"]
    assert [r.status for r in flaky.results] == [TaskStatus.failed, TaskStatus.passed]
    assert flaky.results[0].error_code == "verify_failed"
    assert flaky.runs == 2
    assert record.batches[0].decision.retry.keys() == {"flaky"}
    prompt = git(["show", f"{record.integration_branch}:prompt-flaky.md"], cwd=repo)
    assert "## Retry guidance" in prompt
    assert "flaky.txt says bad, expected good" in prompt


def test_failed_attempt_feeds_verify_output_to_the_next_attempt_in_the_same_job(
    make_repo, write_taskset, run_taskset
):
    repo = make_repo()
    agent = (
        'if grep -q "## Previous attempt failed" "$OTTO_FARM_PROMPT_FILE" && grep -q "MARKER-42" '
        '"$OTTO_FARM_PROMPT_FILE"; then echo good > f.txt; else echo bad > f.txt; fi'
    )
    path = write_taskset(
        {
            "repo": str(repo),
            "max_attempts": 2,
            "verify": "grep -q good f.txt || (echo 'Error: MARKER-42'; exit 1)",
            "agent": {"command": agent},
            "tasks": [{"key": "two-tries", "prompt": "write f.txt"}],
        }
    )
    record = run_taskset(path)
    result = record.tasks["two-tries"].results[0]
    assert result.status is TaskStatus.passed
    assert [a.error_code for a in result.attempts] == ["verify_failed", None]
    assert "MARKER-42" in result.attempts[0].verify_output


def test_task_failing_for_good_skips_its_dependents(make_repo, write_taskset, run_taskset):
    repo = make_repo()
    path = write_taskset(
        {
            "repo": str(repo),
            "max_attempts": 1,
            "max_task_runs": 1,
            "verify": "false",
            "agent": {"command": "echo x > x.txt"},
            "tasks": [
                {"key": "broken", "prompt": "never passes"},
                {"key": "child", "prompt": "needs broken", "depends_on": ["broken"]},
                {"key": "grandchild", "prompt": "needs child", "depends_on": ["child"]},
                {"key": "free", "prompt": "independent", "verify": "true"},
            ],
        }
    )
    record = run_taskset(path)
    assert record.status is RunStatus.failed
    assert record.tasks["broken"].status is TaskStatus.failed
    assert record.tasks["child"].status is TaskStatus.skipped
    assert "broken" in record.tasks["child"].reason
    assert record.tasks["grandchild"].status is TaskStatus.skipped
    assert record.tasks["free"].status is TaskStatus.passed
    assert len(record.batches) == 1


def test_merge_conflict_is_reported_and_retried_from_the_new_base(make_repo, write_taskset, run_taskset):
    repo = make_repo({"shared.txt": "base\n"})
    path = write_taskset(
        {
            "repo": str(repo),
            "verify": "true",
            "agent": {"command": "echo $OTTO_FARM_TASK_KEY >> shared.txt"},
            "tasks": [{"key": "first", "prompt": "append"}, {"key": "second", "prompt": "append"}],
        }
    )
    record = run_taskset(path)
    assert record.status is RunStatus.passed
    first, second = record.tasks["first"], record.tasks["second"]
    assert first.runs == 1 and second.runs == 2
    decision = record.batches[0].decision
    assert list(decision.retry) == ["second"]
    assert "shared.txt" in decision.retry["second"]
    # The retry started from the integration head holding first's line, so both lines are there.
    assert git(["show", f"{record.integration_branch}:shared.txt"], cwd=repo) == "base\nfirst\nsecond\n"
    assert second.results[1].base_sha == record.batches[0].merged_sha


def test_what_setup_creates_is_not_committed(make_repo, write_taskset, run_taskset):
    repo = make_repo()
    record = run_taskset(
        write_taskset(
            {
                "repo": str(repo),
                "setup": "mkdir -p .venv/lib && touch .venv/lib/site.py deps.lock",
                "verify": "test -f .venv/lib/site.py",  # setup's files are there for the agent and verify
                "agent": {"command": "echo feature > feature.txt"},
                "tasks": [{"key": "feat", "prompt": "add a feature"}],
            }
        )
    )
    assert record.status is RunStatus.passed
    files = branch_files(repo, record.integration_branch)
    assert "feature.txt" in files
    assert not {".venv/lib/site.py", "deps.lock"} & files


def test_batch_with_nothing_to_merge_leaves_the_integration_branch_where_it_was(
    make_repo, write_taskset, run_taskset
):
    repo = make_repo()
    record = run_taskset(
        write_taskset(
            {
                "repo": str(repo),
                "max_attempts": 1,
                "max_task_runs": 1,
                "verify": "test -f a.txt",
                "agent": {"command": "touch $OTTO_FARM_TASK_KEY.txt"},
                "tasks": [
                    {"key": "a", "prompt": "p"},
                    {"key": "b", "prompt": "p", "depends_on": ["a"], "verify": "false"},
                    {"key": "c", "prompt": "p", "depends_on": ["b"]},
                ],
            }
        )
    )
    assert record.status is RunStatus.failed
    first, second = record.batches
    assert second.merged_sha == first.merged_sha == record.integration_sha
    assert git(["rev-parse", record.integration_branch], cwd=repo).strip() == first.merged_sha
    assert record.tasks["c"].status is TaskStatus.skipped


def test_a_batch_decision_keeps_its_next_batch_not_the_whole_plan(make_repo, write_taskset, run_taskset):
    """Guards the record's size (issue 17): each batch's decision keeps the next batch and a count of
    the rest; the plan is kept once, so the record does not grow with tasks × batches."""
    chain = [{"key": f"t{i}", "prompt": "p", "depends_on": [f"t{i - 1}"] if i else []} for i in range(4)]
    path = write_taskset(
        {"repo": str(make_repo()), "verify": "true", "agent": {"command": "true"}, "tasks": chain}
    )
    record = run_taskset(path)
    assert record.status is RunStatus.passed
    kept = [(b.decision.batches, b.decision.later_batches) for b in record.batches if b.decision]
    assert kept == [([["t1"]], 2), ([["t2"]], 1), ([["t3"]], 0), ([], 0)]
