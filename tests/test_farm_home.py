"""One farm per user: its state in the XDG state dir, reached from any directory, made only by submit/up."""

from __future__ import annotations

from pathlib import Path

from test_cli import otto

from otto_farm.embedded import Embedded
from otto_farm.settings import Settings

HOW = "`otto-farm up` or `submit` starts one"


def test_runs_status_and_logs_find_the_run_from_another_directory(make_repo, write_taskset, tmp_path, llm):
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "max_attempts": 1,
            "verify": "true",
            "agent": {"command": "echo from-the-farm; touch x"},
            "tasks": [{"key": "t", "prompt": "p"}],
        }
    )
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    submit = otto("submit", str(path), "--workers", "1", cwd=here, env=state)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    run_id = submit.stdout.split()[1].rstrip(":")
    assert (tmp_path / "state" / "otto-farm").is_dir() and not list(here.iterdir())

    runs = otto("runs", cwd=elsewhere, env=state)
    assert runs.returncode == 0 and run_id in runs.stdout, runs.stderr
    status = otto("status", run_id, cwd=elsewhere, env=state)
    assert status.returncode == 0 and f"run {run_id} passed" in status.stdout, status.stderr
    logs = otto("logs", "t", cwd=elsewhere, env=state)  # the latest run's task
    assert logs.returncode == 0 and "from-the-farm" in logs.stdout, logs.stderr
    assert not list(elsewhere.iterdir())  # no stray state dir where the commands ran


def test_read_commands_in_an_empty_home_create_nothing(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    # XDG_STATE_HOME empty (unset, as XDG reads it): the default under $HOME.
    env = {"HOME": str(user), "XDG_STATE_HOME": ""}
    home = user / ".local" / "state" / "otto-farm"
    for args in (("runs",), ("status",), ("logs", "t"), ("cancel", "r1"), ("down",)):
        proc = otto(*args, cwd=tmp_path, env=env)
        if args != ("down",):
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert proc.stderr == f"otto-farm: OTTO_FARM_HOME: {home}: no farm here yet: {HOW}\n"
        else:
            assert proc.returncode == 0 and proc.stdout == f"no farm under {home}\n", proc.stderr
    assert not list(user.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["user"]


def test_a_home_too_long_for_a_unix_socket_still_runs_its_redis(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    home = tmp_path / ("deep-" * 20) / "otto-farm"
    farm = Embedded(Settings(home=home))
    assert not farm.socket.is_relative_to(home)
    farm.start_redis()
    try:
        assert farm.redis_up()
    finally:
        farm.stop()
    assert not farm.socket.exists() and Path(home / "redis.log").is_file()
