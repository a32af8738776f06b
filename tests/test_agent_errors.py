"""An agent that cannot run at all: said where it happens, and not tried again."""

from __future__ import annotations

from test_cli import otto

from otto_farm.models import RunStatus


def test_an_agent_command_not_found_is_not_retried_and_its_cause_is_shown(
    make_repo, write_taskset, settings, store, worker, tmp_path
):
    env = settings.env()
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "verify": "true",
            "max_attempts": 2,
            "max_task_runs": 2,
            "agent": {"command": "no-such-agent-xyz --go"},
            "tasks": [{"key": "a", "prompt": "p"}],
        }
    )
    proc = otto("submit", str(path), cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    run_id = proc.stdout.split()[1].rstrip(":")
    record = store.get(run_id)
    assert record.status is RunStatus.failed
    state = record.tasks["a"]
    assert state.runs == 1 and len(state.results[0].attempts) == 1  # not 2 attempts × 2 runs
    assert state.results[0].error_code == "agent_cannot_run"
    [finished] = [line for line in proc.stdout.splitlines() if "!! a" in line]
    assert "no-such-agent-xyz: command not found" in finished, proc.stdout
    status = otto("status", run_id, cwd=tmp_path, env=env)
    assert "no-such-agent-xyz: command not found" in status.stdout, status.stdout
    logs = otto("logs", run_id, "a", cwd=tmp_path, env=env)
    assert "agent exited 127" in logs.stdout and "end_turn" not in logs.stdout, logs.stdout


def test_a_command_agent_that_runs_is_not_said_to_stop_at_end_turn(
    make_repo, write_taskset, run_taskset, settings, tmp_path
):
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "verify": "true",
            "agent": {"command": "echo did it; touch x"},
            "tasks": [{"key": "a", "prompt": "p"}],
        }
    )
    record = run_taskset(path)
    logs = otto("logs", record.run_id, "a", cwd=tmp_path, env=settings.env())
    assert "--- attempt 1: agent exited 0" in logs.stdout and "end_turn" not in logs.stdout, logs.stdout
