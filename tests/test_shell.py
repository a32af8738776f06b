"""Shell commands: exit codes, output, deadlines that take the whole process group, scrubbed env."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from otto_farm.shell import run, safe_env

from conftest import gone_soon


def test_exit_code_and_output(tmp_path):
    res = run("echo out; echo err >&2; pwd; exit 3", cwd=tmp_path, timeout_s=10)
    assert res.exit_code == 3
    assert res.output.splitlines() == ["out", "err", str(tmp_path)]
    assert res.stderr == ""
    assert not res.timed_out


def test_split_stderr_and_stdin(tmp_path):
    res = run("cat; echo oops >&2", cwd=tmp_path, timeout_s=10, stdin="from stdin\n", split_stderr=True)
    assert res.exit_code == 0
    assert res.output == "from stdin\n"
    assert res.stderr == "oops\n"


def test_stdin_larger_than_a_pipe_whether_read_or_not(tmp_path):
    prompt = "p" * 1_000_000
    assert run("wc -c", cwd=tmp_path, timeout_s=10, stdin=prompt).output.strip() == "1000000"
    ignored = run("exit 4", cwd=tmp_path, timeout_s=10, stdin=prompt, stop=lambda: False)
    assert ignored.exit_code == 4 and not ignored.timed_out


def test_a_command_that_outlasts_a_stop_poll_still_reports_its_exit(tmp_path):
    polls = []
    res = run("sleep 1.2; exit 5", cwd=tmp_path, timeout_s=10, stop=lambda: polls.append(1) is not None)
    assert res.exit_code == 5 and not res.stopped and len(polls) >= 2  # asked every half second


def test_output_keeps_its_head_and_tail(tmp_path):
    res = run("seq 1 10000", cwd=tmp_path, timeout_s=10, max_output_chars=100)
    assert res.output.startswith("1\n2\n3\n")
    assert res.output.endswith("9999\n10000\n")
    assert "bytes cut" in res.output
    assert len(res.output) < 200


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    res = run(f"sleep 30 & echo $! > {pidfile}; echo started; wait", cwd=tmp_path, timeout_s=1)
    assert time.monotonic() - start < 10
    assert res.timed_out
    assert res.exit_code == -signal.SIGKILL
    assert res.output == "started\n"  # output so far survives the kill
    child = int(pidfile.read_text())
    assert gone_soon(child)


def test_background_child_does_not_outlive_its_command(tmp_path):
    pidfile = tmp_path / "child.pid"
    res = run(f"sleep 30 > /dev/null 2>&1 & echo $! > {pidfile}", cwd=tmp_path, timeout_s=10)
    assert res.exit_code == 0
    assert not res.timed_out
    assert gone_soon(int(pidfile.read_text()))


def test_safe_env_drops_secrets(monkeypatch):
    secrets = {
        "ANTHROPIC_API_KEY": "sk-ant-1",
        "OTTO_FARM_BROKER_URL": "redis://:pw@host/0",
        "OTTO_FARM_RESULT_BACKEND": "redis://:pw@host/1",
        "OTTO_FARM_STORE_URL": "redis://:pw@host/2",
        "OTTO_FARM_FLOWER_BASIC_AUTH": "admin:pw",
        "DB_PASSWORD": "hunter2",
        "GITHUB_TOKEN": "ghp_1",
        "aws_secret_access_key": "abc",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTTO_FARM_HOME", "/srv/farm")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = safe_env({"OTTO_FARM_TASK_KEY": "a"})
    assert not set(secrets) & set(env)
    assert env["OTTO_FARM_HOME"] == "/srv/farm"
    assert env["LANG"] == "C.UTF-8"
    assert env["OTTO_FARM_TASK_KEY"] == "a"


def test_safe_env_puts_this_interpreter_first_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    path = safe_env()["PATH"].split(os.pathsep)
    assert path == [str(Path(sys.executable).parent), "/usr/bin", "/bin"]


def test_run_uses_the_safe_env_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("VISIBLE_SETTING", "shown")
    res = run("env; command -v python", cwd=tmp_path, timeout_s=10)
    assert "sk-ant-secret" not in res.output
    assert "VISIBLE_SETTING=shown" in res.output
    assert res.output.splitlines()[-1] == str(Path(sys.executable).parent / "python")


def test_stop_ends_the_command_and_its_group(tmp_path):
    pidfile = tmp_path / "bg.pid"
    asked = []

    def stop() -> bool:
        asked.append(1)
        return pidfile.exists()

    started = time.monotonic()
    res = run(f"sleep 30 & echo $! > {pidfile}; wait", cwd=tmp_path, timeout_s=60, stop=stop)
    assert res.stopped and not res.timed_out and time.monotonic() - started < 10
    assert asked and gone_soon(int(pidfile.read_text()))
