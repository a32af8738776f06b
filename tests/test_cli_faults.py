"""Faults that used to cost a run: concurrent submits on the embedded default, Ctrl-C, `down` while runs
run, `resume` with no worker or with its jobs still out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from test_cli import cli_env, farm_home, otto

from conftest import wait_for

# Short leases and frequent sweeps: a killed worker's job goes again within seconds.
FAST = {"OTTO_FARM_LEASE_S": "3", "OTTO_FARM_SWEEP_S": "1"}


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`otto-farm ARGS` in the background, as `otto` runs it in the foreground."""
    return subprocess.Popen(
        [sys.executable, "-m", "otto_farm", *args],
        cwd=cwd,
        env=cli_env(cwd, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_id_of(proc: subprocess.Popen[str]) -> str:
    """The run id from submit's first line, `run ID: ...`."""
    assert proc.stdout is not None
    return proc.stdout.readline().split()[1].rstrip(":")


def status(run_id: str, cwd: Path) -> str:
    out = otto("status", run_id, "--json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["status"])


def tasks(repo: Path, keys: list[str], agent: str) -> dict[str, object]:
    return {
        "repo": str(repo),
        "verify": "true",
        "sandbox": {"kind": "none"},  # the agents write where the test reads: outside their worktrees
        "agent": {"command": agent},
        "tasks": [{"key": k, "prompt": "p"} for k in keys],
    }


def test_two_submits_at_once_share_the_embedded_farm(make_repo, write_taskset, tmp_path, llm):
    repo = make_repo()
    # The first ends well before the second: its farm must not go down under the second.
    first = write_taskset(tasks(repo, ["a"], "touch a.txt"), name="one.yaml")
    second = write_taskset(tasks(repo, ["b"], "sleep 6; touch b.txt"), name="two.yaml")
    procs = [start("submit", str(first), cwd=tmp_path)]
    wait_for(lambda: (farm_home(tmp_path) / "redis.sock").exists())  # the second joins a starting farm
    procs.append(start("submit", str(second), cwd=tmp_path))
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    assert not (farm_home(tmp_path) / "redis.sock").exists()  # the last to leave stopped it


def test_ctrl_c_cancels_a_run_on_the_submits_own_farm(make_repo, write_taskset, tmp_path, llm):
    pidfile = tmp_path / "agent.pid"
    path = write_taskset(tasks(make_repo(), ["slow"], f"echo $$ > {pidfile}; sleep 60"))
    proc = start("submit", str(path), cwd=tmp_path)
    run_id = run_id_of(proc)
    wait_for(pidfile.exists, timeout_s=60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == f"otto-farm: interrupted; cancelling run {run_id} (Ctrl-C again to exit now)"
    assert not (farm_home(tmp_path) / "redis.sock").exists()
    assert status(run_id, tmp_path) == "cancelled"


def test_a_second_ctrl_c_exits_at_once_and_down_stops_what_is_left(make_repo, write_taskset, tmp_path, llm):
    pidfile = tmp_path / "agent.pid"
    path = write_taskset(tasks(make_repo(), ["slow"], f"echo $$ > {pidfile}; sleep 60"))
    proc = start("submit", str(path), cwd=tmp_path)
    run_id_of(proc)
    wait_for(pidfile.exists, timeout_s=60)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None and "cancelling run" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)  # while the farm stops: its worker waits for the job to see the cancel
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "exiting now" in err
    assert otto("down", "--force", cwd=tmp_path).returncode == 0
    assert not (farm_home(tmp_path) / "redis.sock").exists()


def test_ctrl_c_leaves_a_run_on_up_going_and_down_asks_for_force(make_repo, write_taskset, tmp_path, llm):
    marker = tmp_path / "agent.started"
    path = write_taskset(tasks(make_repo(), ["a"], f"touch {marker}; sleep 5; touch a.txt"))
    assert otto("up", "--workers", "1", cwd=tmp_path, env=FAST).returncode == 0
    try:
        proc = start("submit", str(path), cwd=tmp_path)
        run_id = run_id_of(proc)
        wait_for(marker.exists, timeout_s=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert f"`otto-farm status {run_id}`" in err and f"`otto-farm cancel {run_id}`" in err
        refused = otto("down", cwd=tmp_path)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
        assert run_id in refused.stderr and "--force" in refused.stderr
        assert status(run_id, tmp_path) == "running"
        watch = otto("status", run_id, "--watch", cwd=tmp_path)
        assert watch.returncode == 0 and status(run_id, tmp_path) == "passed"
    finally:
        assert otto("down", "--force", cwd=tmp_path).returncode == 0


def test_down_force_interrupts_a_run_and_up_goes_on_with_it(make_repo, write_taskset, tmp_path, llm):
    marker = tmp_path / "agent.started"
    path = write_taskset(tasks(make_repo(), ["a"], f"touch {marker}; sleep 5; touch a.txt"))
    assert otto("up", "--workers", "1", cwd=tmp_path, env=FAST).returncode == 0
    try:
        submitted = otto("submit", str(path), "--no-wait", cwd=tmp_path)
        run_id = submitted.stdout.split()[1].rstrip(":")
        wait_for(marker.exists, timeout_s=60)
        down = otto("down", "--force", cwd=tmp_path)
        assert down.returncode == 0 and f"run {run_id} interrupted" in down.stdout
        assert otto("up", "--workers", "1", cwd=tmp_path, env=FAST).returncode == 0
        assert otto("status", run_id, "--watch", cwd=tmp_path).returncode == 0
        assert status(run_id, tmp_path) == "passed"
    finally:
        assert otto("down", "--force", cwd=tmp_path).returncode == 0


def test_resume_sends_nothing_started_or_queued_and_needs_a_worker(make_repo, write_taskset, tmp_path, llm):
    log = tmp_path / "agents.log"
    agent = f"echo $OTTO_FARM_TASK_KEY >> {log}; sleep 4; touch x"
    path = write_taskset(tasks(make_repo(), ["a", "b"], agent))
    home = farm_home(tmp_path)
    assert otto("up", "--workers", "1", cwd=tmp_path, env=FAST).returncode == 0
    try:
        run_id = otto("submit", str(path), "--no-wait", cwd=tmp_path).stdout.split()[1].rstrip(":")
        wait_for(log.exists, timeout_s=60)
        # One slot: one job runs (claimed), the other waits in the queue. Neither goes again.
        resumed = otto("resume", run_id, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.strip() == f"run {run_id}: batch 1: 2 of 2 jobs started or queued; nothing sent"
        # With no worker, nothing is sent: it would pile up, to be delivered again beside the sweep's copy.
        os.killpg(int((home / "workers.pid").read_text()), signal.SIGKILL)
        orphaned = otto("resume", run_id, cwd=tmp_path)
        assert orphaned.returncode == 3
        assert orphaned.stderr.strip() == (
            "otto-farm: no worker consumes the queue otto.tasks: start one (`otto-farm up` or "
            "`otto-farm worker`), then resume again"
        )
        assert otto("up", "--workers", "1", cwd=tmp_path, env=FAST).returncode == 0
        assert otto("status", run_id, "--watch", cwd=tmp_path).returncode == 0
        assert status(run_id, tmp_path) == "passed"
    finally:
        assert otto("down", "--force", cwd=tmp_path).returncode == 0
    # The job that was running when its worker died went twice (then, and the sweep's), the queued one once.
    received = re.findall(r"run_task\[(\S+)\] received", (home / "worker.log").read_text())
    assert sorted(received.count(job) for job in set(received)) == [1, 2]
