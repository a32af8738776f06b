"""`otto-farm prune`: finished runs' branches leave their repository, and their records the store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otto_farm import keys
from otto_farm.gitops import git
from otto_farm.models import RunStatus
from otto_farm.settings import Settings
from otto_farm.store import Store

from conftest import free_port, make_record

DAY_S = 86400


@pytest.fixture
def prune(settings: Settings, tmp_path: Path):
    """Run `otto-farm prune ARGS` against the test Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTTO_FARM_")} | settings.env()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "otto_farm", "prune", *args]
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    return run


def branches(repo: Path, run_id: str) -> set[str]:
    out = git(["branch", "--list", f"otto-farm/{run_id}/*", "--format=%(refname:short)"], cwd=repo)
    return set(out.split())


def stored_keys(store: Store, run_id: str) -> set[str]:
    """The run's keys, and where it is indexed."""
    found = set(store.redis.scan_iter(f"{keys.run_key(run_id)}*"))
    if store.redis.zscore(keys.runs_index_key(), run_id) is not None:
        found.add("index")
    if store.redis.sismember(keys.active_runs_key(), run_id):
        found.add("active")
    return found


def test_prune_by_id_and_by_age(make_repo, write_taskset, run_taskset, store, prune):
    repo = make_repo()
    path = write_taskset(
        {
            "repo": str(repo),
            "verify": "true",
            "agent": {"command": "touch $OTTO_FARM_TASK_KEY.txt"},
            "tasks": [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p"}],
        }
    )
    old, new = run_taskset(path), run_taskset(path)
    assert old.status is new.status is RunStatus.passed
    for run in (old, new):
        every = {f"otto-farm/{run.run_id}/{b}" for b in ("a", "b", "candidate", "integration")}
        assert branches(repo, run.run_id) == every
        assert {keys.run_key(run.run_id), "index"} <= stored_keys(store, run.run_id)
    # A run still running, as old as can be: never pruned. Out of the active set, so no sweep takes it up.
    running = make_record([{"key": "a", "prompt": "p"}], {}).model_copy(update={"run_id": "r-prune-running"})
    store.create(running)
    store.retire(running.run_id)
    store.redis.zadd(keys.runs_index_key(), {running.run_id: 0, old.run_id: time.time() - 8 * DAY_S})
    try:
        for args, line in [
            ([running.run_id], f"run: {running.run_id}: is still running: cancel it first"),
            (["NO-SUCH-RUN"], "run: NO-SUCH-RUN: no such run"),
            (["--older-than", "7 days"], "--older-than: '7 days' is not a duration (e.g. 7d, 12h, 30m)"),
            ([], "prune: give either a run id or --older-than"),
            ([new.run_id, "--older-than", "7d"], "prune: give either a run id or --older-than"),
        ]:
            res = prune(*args)
            assert (res.returncode, res.stderr.splitlines(), res.stdout) == (2, [f"otto-farm: {line}"], "")

        res = prune("--older-than", "7d")
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == [
            f"run {old.run_id} pruned: 3 branches deleted from {repo}, records removed; "
            f"integration branch otto-farm/{old.run_id}/integration kept"
        ]
        assert branches(repo, old.run_id) == {f"otto-farm/{old.run_id}/integration"}
        assert stored_keys(store, old.run_id) == set()
        assert len(branches(repo, new.run_id)) == 4  # a day old at most: not yet
        assert store.get(running.run_id).status is RunStatus.running

        res = prune(new.run_id, "--integration")
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"run {new.run_id} pruned: 4 branches deleted from {repo}, records removed\n"
        assert branches(repo, new.run_id) == set()
        assert stored_keys(store, new.run_id) == set()
        assert prune(new.run_id).returncode == 2  # gone: no such run
        assert git(["branch", "--format=%(refname:short)", "--list", "main"], cwd=repo).split() == ["main"]
    finally:
        store.forget(running.run_id)


def test_prune_leaves_a_run_whose_jobs_still_run_or_whose_repo_is_away(store, prune):
    url = f"http://user:s3cret@127.0.0.1:{free_port()}/x.git"  # nobody listens there
    record = make_record([{"key": "a", "prompt": "p"}], {}).model_copy(
        update={"run_id": "r-prune-away", "status": RunStatus.cancelled, "repo": url}
    )
    store.create(record)
    store.retire(record.run_id)
    try:
        # A job of the cancelled run still holds its lease: it could push its branch after the prune.
        store.redis.sadd(keys.claims_key(record.run_id), "job-1")
        store.redis.set(keys.lease_key("job-1"), "token", px=60_000)
        res = prune(record.run_id)
        assert res.returncode == 2
        line = f"otto-farm: run: {record.run_id}: its jobs are still stopping: try again in a moment"
        assert res.stderr.splitlines() == [line]
        store.redis.delete(keys.lease_key("job-1"))  # it ended (or died): its claim alone is left
        res = prune(record.run_id)
        assert res.returncode == 3
        [line] = res.stderr.splitlines()
        assert line.startswith(f"otto-farm: run {record.run_id}: git ls-remote")
        assert "s3cret" not in line and "user:***@" in line
        assert store.get(record.run_id).status is RunStatus.cancelled  # kept, to try again
    finally:
        store.forget(record.run_id)
