"""The otto-farm command as a user runs it: exit codes, output, the embedded default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from otto_farm.gitops import git

from conftest import LLM_ENV, branch_files


def farm_home(cwd: Path) -> Path:
    """The embedded farm's state dir of a command run in `cwd` by `otto`: each test's own."""
    return cwd / ".state" / "otto-farm"


def cli_env(cwd: Path, env: dict[str, str] | None) -> dict[str, str]:
    """The environment `otto` runs in: no farm settings or keys from outside, the default home per test."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTTO_FARM_", "ANTHROPIC_"))}
    return {**clean, **LLM_ENV, "COLUMNS": "200", "XDG_STATE_HOME": str(cwd / ".state"), **(env or {})}


def otto(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otto_farm", *args],
        cwd=cwd,
        env=cli_env(cwd, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def farm_env(settings, worker) -> dict[str, str]:
    return settings.env()


def test_submit_exits_0_when_every_task_passed_and_status_shows_them(
    make_repo, write_taskset, farm_env, tmp_path
):
    repo = make_repo()
    path = write_taskset(
        {
            "repo": str(repo),
            "verify": "true",
            "agent": {"command": "touch ok.txt"},
            "tasks": [{"key": "one", "prompt": "p"}],
        }
    )
    proc = otto("submit", str(path), cwd=tmp_path, env=farm_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = proc.stdout.split()[1].rstrip(":")
    assert "one passed" in proc.stdout
    status = otto("status", run_id, "--json", cwd=tmp_path, env=farm_env)
    record = json.loads(status.stdout)
    assert record["status"] == "passed" and record["tasks"]["one"]["status"] == "passed"
    assert run_id in otto("runs", cwd=tmp_path, env=farm_env).stdout
    table = otto("status", run_id, cwd=tmp_path, env=farm_env).stdout
    assert "one" in table and "passed" in table


def test_submit_exits_1_when_a_task_failed_and_logs_show_its_verify_output(
    make_repo, write_taskset, farm_env, tmp_path
):
    repo = make_repo()
    path = write_taskset(
        {
            "repo": str(repo),
            "max_attempts": 1,
            "max_task_runs": 1,
            "verify": "echo 'AssertionError: expected 3, got 4'; exit 1",
            "agent": {"command": "echo working"},
            "tasks": [{"key": "bad", "prompt": "p"}],
        }
    )
    proc = otto("submit", str(path), cwd=tmp_path, env=farm_env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    run_id = proc.stdout.split()[1].rstrip(":")
    logs = otto("logs", run_id, "bad", cwd=tmp_path, env=farm_env)
    assert logs.returncode == 0
    assert "expected 3, got 4" in logs.stdout and "working" in logs.stdout


def test_unreachable_broker_exits_3_with_one_line(write_taskset, make_repo, tmp_path):
    path = write_taskset(
        {"repo": str(make_repo()), "agent": {"command": "true"}, "tasks": [{"key": "a", "prompt": "p"}]}
    )
    url = "redis://127.0.0.1:1/0"
    proc = otto(
        "submit", str(path), cwd=tmp_path, env={"OTTO_FARM_BROKER_URL": url, "OTTO_FARM_STORE_URL": url}
    )
    assert proc.returncode == 3
    assert len(proc.stderr.strip().splitlines()) == 1 and "unreachable" in proc.stderr


def test_demo_runs_the_quickstart_on_the_embedded_redis(tmp_path, llm):
    repo = tmp_path / "demo-repo"
    proc = otto("demo", str(repo), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "retry title" in proc.stdout  # the quickstart's failure path
    branch = git(
        ["branch", "--list", "otto-farm/*/integration", "--format=%(refname:short)"], cwd=repo
    ).strip()
    files = branch_files(repo, branch)
    quickstart = yaml.safe_load((Path(__file__).parents[1] / "tasks/examples/quickstart.yaml").read_text())
    assert len(quickstart["tasks"]) >= 6
    for name in (
        "textkit/slug.py",
        "textkit/words.py",
        "textkit/title.py",
        "textkit/cli.py",
        "textkit/headline.py",
        "docs/usage.md",
    ):
        assert name in files
    assert not (farm_home(tmp_path) / "redis.sock").exists()  # its own farm is stopped again


def test_up_submit_no_wait_status_watch_down(make_repo, write_taskset, tmp_path, llm):
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "verify": "true",
            "agent": {"command": "touch x"},
            "tasks": [{"key": "a", "prompt": "p"}],
        }
    )
    assert otto("submit", str(path), "--no-wait", cwd=tmp_path).returncode == 2  # no farm up yet
    up = otto("up", "--workers", "1", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    try:
        proc = otto("submit", str(path), "--no-wait", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        run_id = proc.stdout.split()[1].rstrip(":")
        watch = otto("status", run_id, "--watch", cwd=tmp_path)
        assert watch.returncode == 0 and "passed" in watch.stdout
        os.killpg(int((farm_home(tmp_path) / "workers.pid").read_text()), signal.SIGKILL)
        time.sleep(0.5)
        orphaned = otto("submit", str(path), cwd=tmp_path)
        assert orphaned.returncode == 3 and "workers are not" in orphaned.stderr
    finally:
        assert otto("down", cwd=tmp_path).returncode == 0
    assert not (farm_home(tmp_path) / "redis.sock").exists()


def test_demo_with_the_anthropic_agent_says_what_it_needs(tmp_path):
    proc = otto(
        "demo",
        str(tmp_path / "d"),
        "--agent",
        "anthropic",
        cwd=tmp_path,
        env={"ANTHROPIC_API_KEY": "", "ANTHROPIC_BASE_URL": ""},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "otto-farm: --agent anthropic: needs ANTHROPIC_API_KEY set "
        "(the workers' agent calls the Anthropic API)"
    )
    assert not (tmp_path / "d").exists()
