"""A worker process killed in the middle of a job loses nothing: the job runs again and the run ends."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from otto_farm.models import RunStatus, TaskStatus


def test_killed_pool_process_has_its_job_redelivered(make_repo, write_taskset, run_taskset, tmp_path, worker):
    marker, agent_pid = tmp_path / "first-delivery.pid", tmp_path / "agent.pid"
    # First delivery: note the job's process (the agent shell's parent) and hang; the second one works.
    agent = (
        f"if [ -f {marker} ]; then echo done > out.txt; "
        f"else echo $$ > {agent_pid}; echo $PPID > {marker}; sleep 60; fi"
    )
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "verify": "test -f out.txt",
            "sandbox": {"kind": "none"},  # the agent writes where the test reads: outside its worktree
            "agent": {"command": agent},
            "tasks": [
                {"key": "victim", "prompt": "p"},
                {"key": "other", "prompt": "p", "agent": {"command": "echo x > out.txt"}},
            ],
        }
    )

    def kill_when_started() -> None:
        deadline = time.monotonic() + 90  # the base's gate check comes first: slow on a loaded machine
        while not marker.exists():
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(int(marker.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    try:
        record = run_taskset(path)
    finally:
        killer.join()
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.killpg(int(agent_pid.read_text()), signal.SIGKILL)  # the first delivery's orphaned agent
    assert record.status is RunStatus.passed
    victim = record.tasks["victim"]
    assert victim.status is TaskStatus.passed and victim.runs == 1 and len(victim.results) == 1
    assert record.tasks["other"].merged_sha and victim.merged_sha
