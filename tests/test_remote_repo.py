"""Workers reach the repository by URL, with no shared working path: a bare file:// remote and git://."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from otto_farm.gitops import git
from otto_farm.models import RunStatus

from conftest import branch_files, free_port, start_worker

TASKS = {
    "verify": "true",
    "agent": {"command": "echo $OTTO_FARM_TASK_KEY > $OTTO_FARM_TASK_KEY.txt"},
    "tasks": [{"key": f"t{i}", "prompt": "p"} for i in range(4)]
    + [{"key": "last", "prompt": "p", "depends_on": ["t0", "t1"]}],
}


def bare_copy(repo: Path, tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    git(["clone", "-q", "--bare", str(repo), str(bare)])
    return bare


def test_two_workers_with_their_own_work_dirs_run_from_a_bare_file_remote(
    make_repo, write_taskset, run_taskset, settings, worker, tmp_path
):
    bare = bare_copy(make_repo(), tmp_path)
    second = start_worker(settings, "remote-second")
    try:
        record = run_taskset(write_taskset({"repo": f"file://{bare}", **TASKS}))
    finally:
        second.stop()
    assert record.status is RunStatus.passed
    assert {"t0.txt", "t3.txt", "last.txt"} <= branch_files(bare, record.integration_branch)
    assert {s.last.worker.split("@")[0] for s in record.tasks.values()} == {"main", "remote-second"}
    # Each worker cloned into its own cache; neither works in the remote itself.
    assert list((worker.work_dir / "repos").iterdir()) and list((second.work_dir / "repos").iterdir())


def test_run_from_a_git_daemon_remote(make_repo, write_taskset, run_taskset, tmp_path):
    bare = bare_copy(make_repo(), tmp_path)
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={tmp_path}",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"git://127.0.0.1:{port}/remote.git"
        deadline = time.monotonic() + 10
        while subprocess.run(["git", "ls-remote", url], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail("git daemon did not come up")
            time.sleep(0.1)
        record = run_taskset(write_taskset({"repo": url, **TASKS}))
    finally:
        daemon.terminate()
        daemon.wait()
    assert record.status is RunStatus.passed
    assert "last.txt" in branch_files(bare, record.integration_branch)
