"""Several worker processes with their own work dirs share one run."""

from __future__ import annotations

from otto_farm.models import RunStatus

from conftest import start_worker


def test_two_workers_run_one_batch_in_parallel(make_repo, write_taskset, run_taskset, settings, worker):
    second = start_worker(settings, "second")
    try:
        repo = make_repo()
        record = run_taskset(
            write_taskset(
                {
                    "repo": str(repo),
                    "verify": "true",
                    "agent": {"command": "sleep 1; echo $OTTO_FARM_TASK_KEY > $OTTO_FARM_TASK_KEY.txt"},
                    "tasks": [{"key": f"t{i}", "prompt": "write"} for i in range(4)],
                }
            )
        )
    finally:
        second.stop()
    assert record.status is RunStatus.passed
    workers = {s.last.worker.split("@")[0] for s in record.tasks.values()}
    assert workers == {"main", "second"}
    assert (second.work_dir / "repos").is_dir() and (worker.work_dir / "repos").is_dir()
    assert len(record.batches) == 1
