"""Messages that say what happened: nothing claimed that is not so, nothing asked for ignored silently."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from test_cli import otto

from otto_farm import coordinator, taskset

from conftest import wait_for


def test_submit_names_a_dirty_tree_an_ignored_workers_option_and_a_task_that_changed_nothing(
    make_repo, write_taskset, settings, worker, tmp_path
):
    repo = make_repo()
    (repo / "notes.txt").write_text("not committed\n")
    path = write_taskset(
        {
            "repo": str(repo),
            "verify": "true",
            "agent": {"command": "true"},
            "tasks": [{"key": "a", "prompt": "p"}],
        }
    )
    proc = otto("submit", str(path), "--workers", "4", cwd=tmp_path, env=settings.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 uncommitted change(s); the agents see only its committed main" in proc.stderr, proc.stderr
    assert "--workers 4 not applied" in proc.stderr, proc.stderr  # the farm's workers were up before
    assert "ok a passed after 1 attempt(s)" in proc.stdout and "; no changes" in proc.stdout, proc.stdout
    assert "merged nothing" in proc.stdout and "[nothing]" not in proc.stdout


def test_cancel_before_any_merge_says_there_is_no_integration_branch(
    make_repo, write_taskset, settings, store, worker, tmp_path
):
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "gate": {"enabled": False},  # ungated, the first batch's merge makes the branch
            "verify": "true",
            "agent": {"command": "sleep 30"},
            "tasks": [{"key": "a", "prompt": "p"}],
        }
    )
    run_id = coordinator.start(store, taskset.load(path)).run_id
    wait_for(lambda: store.get(run_id).tasks["a"].status.value == "running", timeout_s=60)
    proc = otto("cancel", run_id, cwd=tmp_path, env=settings.env())
    assert proc.returncode == 0, proc.stderr
    assert "no integration branch" in proc.stdout and "kept" not in proc.stdout, proc.stdout


def test_logs_of_an_attempt_that_does_not_exist_is_an_input_error(
    make_repo, write_taskset, run_taskset, settings, tmp_path
):
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "verify": "test -e never",
            "max_attempts": 2,
            "max_task_runs": 1,
            "agent": {"command": "touch x"},
            "tasks": [{"key": "a", "prompt": "p"}],
        }
    )
    record = run_taskset(path)
    proc = otto("logs", record.run_id, "a", "--attempt", "5", cwd=tmp_path, env=settings.env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "otto-farm: --attempt: 5: a has attempt(s) 1, 2", proc.stderr
    assert (
        "attempt 2: agent exited 0"
        in otto("logs", record.run_id, "a", "--attempt", "2", cwd=tmp_path, env=settings.env()).stdout
    )


def test_a_second_up_says_the_farm_is_already_up():
    home = Path(tempfile.mkdtemp(prefix="of-"))  # short: unix socket paths are limited
    env = {"OTTO_FARM_HOME": str(home)}
    try:
        first = otto("up", "--workers", "1", cwd=home, env=env)
        assert first.returncode == 0 and first.stdout.startswith("farm up:"), first.stdout + first.stderr
        second = otto("up", cwd=home, env=env)
        assert second.returncode == 0 and second.stdout.startswith("farm already up:"), second.stdout
    finally:
        otto("down", cwd=home, env=env)
        shutil.rmtree(home, ignore_errors=True)
