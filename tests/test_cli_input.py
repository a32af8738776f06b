"""The real CLI in a subprocess: bad input is one line on stderr, exit 2, and nothing written anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otto_farm.gitops import git
from otto_farm.settings import Settings
from otto_farm.store import Store

from conftest import free_port


@pytest.fixture
def cli(settings: Settings, tmp_path: Path):
    """Run `otto-farm ARGS` in tmp_path against the test Redis."""
    # As through a pipe: no terminal width or colour forced from outside.
    drop = ("COLUMNS", "FORCE_COLOR")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTTO_FARM_") and k not in drop}
    env.update(settings.env())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "otto_farm", *args],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def snapshot(store: Store, repo: Path) -> tuple[list[str], set[str], str]:
    """What a run would leave behind: run ids, otto-farm keys in Redis, the repo's refs."""
    return (
        store.run_ids(),
        set(store.redis.scan_iter("otto-farm:*")),
        git(["for-each-ref", "--format=%(refname) %(objectname)"], cwd=repo),
    )


def base_set(repo: Path) -> dict[str, object]:
    return {"repo": str(repo), "agent": {"command": "true"}, "verify": "true"}


@pytest.mark.parametrize(
    ("tasks", "extra", "message"),
    [
        (
            [
                {"key": "a", "prompt": "p", "depends_on": ["b"]},
                {"key": "b", "prompt": "p", "depends_on": ["a"]},
            ],
            {},
            "tasks.depends_on: dependency cycle: a -> b -> a",
        ),
        (
            [{"key": "a", "prompt": "p"}],
            {"max_attempt": 3},
            "max_attempt: unknown field",
        ),
        (
            [{"key": "a", "prompt": "p"}],
            {"integration_branch": "-x"},
            "integration_branch: not a valid git branch name: '-x'",
        ),
        ([{"key": "a", "prompt": "p"}], {"verify": ""}, "verify: must not be empty"),
    ],
    ids=["cycle", "unknown-field", "option-as-branch", "empty-verify"],
)
def test_bad_task_set_exits_2_with_one_line_and_writes_nothing(
    cli, store, make_repo, write_taskset, tasks, extra, message
):
    repo = make_repo()
    path = write_taskset({**base_set(repo), **extra, "tasks": tasks})
    before = snapshot(store, repo)
    res = cli("submit", str(path))  # a long path: the line must not wrap
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"otto-farm: {path}: {message}"]
    assert snapshot(store, repo) == before


def test_duplicate_yaml_key_exits_2_naming_the_key_and_line(cli, store, make_repo, write_taskset):
    repo = make_repo()
    path = write_taskset(
        f"repo: {repo}\nagent: {{command: 'true'}}\ntasks: [{{key: a, prompt: p}}]\nrepo: .\n"
    )
    before = snapshot(store, repo)
    res = cli("submit", str(path))
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"otto-farm: {path}: YAML error at line 4: duplicate key 'repo'"]
    assert snapshot(store, repo) == before


def test_repo_password_is_masked_in_the_error_line(cli, store, make_repo, write_taskset):
    repo = make_repo()
    path = write_taskset({**base_set(repo), "tasks": [{"key": "a", "prompt": "p"}]})
    url = f"http://user:s3cret@127.0.0.1:{free_port()}/x.git"  # nobody listens there
    before = snapshot(store, repo)
    res = cli("submit", str(path), "--repo", url)
    assert res.returncode == 2, res.stderr
    shown = url.replace("s3cret", "***")
    [line] = res.stderr.splitlines()
    assert line.startswith(f"otto-farm: {path}: repo: {shown!r} could not be read: unable to access"), line
    assert "s3cret" not in line and "connect" in line.lower()
    assert snapshot(store, repo) == before


def three_tasks(repo: Path) -> dict[str, object]:
    tasks = [
        {"key": "a", "prompt": "p"},
        {"key": "b", "prompt": "p", "depends_on": ["a"]},
        {"key": "c", "prompt": "p", "depends_on": ["a"]},
    ]
    return {**base_set(repo), "tasks": tasks}


def test_dry_run_prints_the_batches_and_writes_nothing(cli, store, make_repo, write_taskset):
    repo = make_repo()
    write_taskset(three_tasks(repo))
    before = snapshot(store, repo)
    res = cli("submit", "--dry-run", "tasks.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("tasks.yaml: 3 tasks in 2 batches on ")
    assert res.stdout.splitlines()[-2:] == ["  batch 1: a", "  batch 2: b, c"]
    assert res.stderr == ""
    assert snapshot(store, repo) == before


def test_a_2000_long_chain_is_planned_and_a_cycle_at_its_end_is_one_line(cli, make_repo, write_taskset):
    # Measured: plan.find_cycle crashed with a RecursionError traceback and exit 1 on such a chain.
    repo = make_repo()
    chain = [{"key": f"t{i}", "prompt": "p", "depends_on": [f"t{i - 1}"] if i else []} for i in range(2000)]
    write_taskset({**base_set(repo), "tasks": chain})
    res = cli("submit", "--dry-run", "tasks.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "  batch 2000: t1999"
    chain[0]["depends_on"] = ["t1999"]
    write_taskset({**base_set(repo), "tasks": chain})
    res = cli("submit", "--dry-run", "tasks.yaml")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "dependency cycle: t0 -> t1999 -> t1998 -> " in res.stderr


def test_dry_run_header_is_one_line(cli, make_repo, write_taskset):
    repo = make_repo()
    write_taskset(three_tasks(repo))
    res = cli("submit", "--dry-run", "tasks.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == f"tasks.yaml: 3 tasks in 2 batches on {repo.resolve()} (main)"


def test_status_of_an_unknown_run_exits_2(cli, store):
    before = store.run_ids()
    res = cli("status", "NO-SUCH-RUN")
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == ["otto-farm: run: NO-SUCH-RUN: no such run"]
    assert store.run_ids() == before
