"""Redis goes away for ten seconds while agents run: no job is failed for it, no task run is spent.

Measured before: with `max_task_runs: 1`, 4 tasks ended `error` "Celery ended the job:
network:ConnectionError" and 2 dependents were skipped, because the sweep read every FAILURE as a job
killed at its hard time limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otto_farm.embedded import Embedded
from otto_farm.models import RunStatus, TaskStatus
from otto_farm.settings import Settings
from otto_farm.store import Store

from conftest import wait_for

pytestmark = pytest.mark.timeout(300)


def otto(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otto_farm", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_redis_blip_mid_batch_costs_no_task_run(make_repo, write_taskset, tmp_path: Path) -> None:
    home = tmp_path / "farm"
    env = {**os.environ, "OTTO_FARM_HOME": str(home), "OTTO_FARM_LEASE_S": "3", "OTTO_FARM_SWEEP_S": "1"}
    marker = tmp_path / "started"
    data = {
        "repo": str(make_repo()),
        "max_task_runs": 1,
        "verify": "true",
        "sandbox": {"kind": "none"},  # the agents say they started where the test reads
        "agent": {"command": f"touch {marker}; sleep 6; touch $OTTO_FARM_TASK_KEY.txt"},
        "tasks": [
            *({"key": k, "prompt": "p"} for k in ("a", "b", "c", "d")),
            {"key": "e", "prompt": "p", "depends_on": ["a", "b"]},
        ],
    }
    farm = Embedded(Settings(home=home))
    up = otto("up", "--workers", "4", env=env, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        submitted = otto("submit", str(write_taskset(data)), "--no-wait", env=env, cwd=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.split()[1].rstrip(":")
        wait_for(marker.exists, timeout_s=60)
        os.kill(int((home / "redis.pid").read_text()), signal.SIGTERM)  # Redis writes its AOF and exits
        wait_for(lambda: not farm.redis_up(), timeout_s=15)
        time.sleep(20)  # past redis-py's own retries (3, backing off up to 10 s)
        farm.start_redis()
        store = Store.from_url(f"unix://{home / 'redis.sock'}")
        deadline = time.monotonic() + 150
        while (record := store.get(run_id)).status is RunStatus.running:
            assert time.monotonic() < deadline, record.model_dump_json(indent=1)[-3000:]
            time.sleep(0.5)
    finally:
        otto("down", env=env, cwd=tmp_path)
        for proc in farm.procs:  # the Redis this test started again: `down` stopped it
            proc.wait()
    assert record.status is RunStatus.passed, record.error
    assert {k: (s.status, s.runs) for k, s in record.tasks.items()} == {
        k: (TaskStatus.passed, 1) for k in "abcde"
    }
