"""Jobs that run out of time or die: the run records them and goes on."""

from __future__ import annotations

from otto_farm import chords
from otto_farm.models import RunStatus, TaskStatus

from conftest import NO_GATE


def slow_set(repo, timeout_s: float) -> dict:
    return {
        "repo": str(repo),
        **NO_GATE,
        "timeout_s": timeout_s,
        "max_task_runs": 1,
        "verify": "true",
        "agent": {"command": "sleep 20"},
        "tasks": [
            {"key": "slow", "prompt": "never ends in time"},
            {"key": "quick", "prompt": "fine", "agent": {"command": "touch q"}},
        ],
    }


def test_agent_past_the_job_deadline_ends_as_timeout(make_repo, write_taskset, run_taskset):
    record = run_taskset(write_taskset(slow_set(make_repo(), timeout_s=1)))
    slow = record.tasks["slow"]
    assert slow.status is TaskStatus.timeout and slow.last.error_code == "agent_timeout"
    assert record.tasks["quick"].status is TaskStatus.passed
    assert record.status is RunStatus.failed


def test_soft_time_limit_is_caught_inside_the_job(make_repo, write_taskset, run_taskset, monkeypatch):
    monkeypatch.setattr(chords, "WAIT_ALLOWANCE_S", 0)  # no API call here to wait for
    monkeypatch.setattr(chords, "SOFT_LIMIT_GRACE_S", -28)  # Celery's soft limit at 2 s
    record = run_taskset(write_taskset(slow_set(make_repo(), timeout_s=30)))
    slow = record.tasks["slow"]
    assert slow.status is TaskStatus.timeout and slow.last.error_code == "job_timeout"
    assert record.tasks["quick"].status is TaskStatus.passed


def test_job_that_raises_is_reported_as_an_error_and_the_run_goes_on(
    make_repo, write_taskset, run_taskset, monkeypatch
):
    signature = chords.app.signature

    def breaking(name, args=(), **options):  # the slow task's job gets a batch index it cannot load
        if name == "otto_farm.run_task" and args[1] == "slow":
            args = (*args[:3], 99)
        return signature(name, args=args, **options)

    monkeypatch.setattr(chords.app, "signature", breaking)
    record = run_taskset(write_taskset(slow_set(make_repo(), timeout_s=30)))
    slow = record.tasks["slow"]
    assert slow.status is TaskStatus.error and slow.last.error_code == "infrastructure"
    assert "no task slow in batch 100" in slow.last.error
    assert record.tasks["quick"].status is TaskStatus.passed and record.tasks["quick"].merged_sha
    assert record.status is RunStatus.failed
