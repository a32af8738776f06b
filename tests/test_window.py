"""A batch boundary where nothing failed reads a window of the run (runparts.Window), not the whole run:
its cost does not grow with the run's size. Seen from Redis itself, with MONITOR."""

from __future__ import annotations

import threading
import time
from typing import Any

from otto_farm import coordinator, keys, taskset
from otto_farm.models import RunStatus, TaskStatus

from conftest import NO_GATE, wait_for_run

LAYERS = 6


def chain(repo: str, failing: str | None = None) -> dict[str, Any]:
    """LAYERS batches of two no-op tasks, each after the one before it in its column."""
    tasks: list[dict[str, Any]] = []
    for layer in range(LAYERS):
        for col in range(2):
            task: dict[str, Any] = {"key": f"t{layer}-{col}", "prompt": "p"}
            if layer:
                task["depends_on"] = [f"t{layer - 1}-{col}"]
            if task["key"] == failing:
                task["verify"] = "false"
            tasks.append(task)
    return {
        "repo": repo,
        "verify": "true",
        "agent": {"command": "true"},
        "max_attempts": 1,
        "max_task_runs": 1,
        "max_batch_size": 2,
        "pilot": {"enabled": False},
        "tasks": tasks,
        **NO_GATE,
    }


def sent(store, write_taskset, data: dict[str, Any]) -> tuple[list[str], str]:
    """The commands Redis was sent while the run ran, and its run id."""
    seen: list[str] = []
    done = threading.Event()

    def monitor() -> None:
        with store.redis.monitor() as m:
            ready.set()
            for command in m.listen():
                if done.is_set():
                    return
                seen.append(command["command"])

    ready = threading.Event()
    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    assert ready.wait(10)
    time.sleep(0.2)  # MONITOR is on once its reply came back; ready is set just before that
    run_id = coordinator.start(store, taskset.load(write_taskset(data))).run_id
    # Waiting on the run's events, not reading its record: the test's own reads stay out of the count.
    after, finished = "0", False
    deadline = time.monotonic() + 120
    while not finished and time.monotonic() < deadline:
        for eid, event in store.events(run_id, after, block_ms=1000):
            after, finished = eid, finished or event["kind"] == "run_finished"
    done.set()
    store.redis.ping()  # the monitor thread sees one more command and stops
    thread.join(10)
    return seen, run_id


def whole_reads(store, write_taskset, data: dict[str, Any]) -> tuple[int, str]:
    """How many times the run's task states were read whole (HGETALL) while it ran, and its run id."""
    seen, run_id = sent(store, write_taskset, data)
    return sum(cmd == f"HGETALL {keys.states_key(run_id)}" for cmd in seen), run_id


def test_boundaries_where_nothing_failed_do_not_read_the_whole_run(make_repo, write_taskset, store, worker):
    seen, run_id = sent(store, write_taskset, chain(str(make_repo())))
    assert wait_for_run(store, run_id).status is RunStatus.passed
    # The first batch's dispatch and the run's end read every task; the LAYERS - 1 boundaries between
    # read their batch's window. Reading whole, each boundary read the run twice (10 more here).
    assert sum(cmd == f"HGETALL {keys.states_key(run_id)}" for cmd in seen) == 2
    # The plan is written once, and each batch that opens takes its first batch off it: a boundary
    # reads the next batch alone (LINDEX), whatever the plan's length.
    plan = keys.plan_key(run_id)
    on_plan = [cmd.split(" ", 2)[0] for cmd in seen if cmd.split(" ")[1:2] == [plan]]
    assert on_plan.count("RPUSH") == 1 and on_plan.count("LPOP") == LAYERS
    assert on_plan.count("LRANGE") == 2 and "LINDEX" in on_plan


def test_a_failure_reads_the_whole_run_and_the_replan_skips_its_dependents(
    make_repo, write_taskset, store, worker
):
    reads, run_id = whole_reads(store, write_taskset, chain(str(make_repo()), failing="t2-0"))
    record = wait_for_run(store, run_id)
    assert record.status is RunStatus.failed
    assert [record.tasks[f"t{n}-0"].status for n in (3, 4, 5)] == [TaskStatus.skipped] * 3
    assert all(record.tasks[f"t{n}-1"].status is TaskStatus.passed for n in range(LAYERS))
    assert reads == 3  # the failed batch's boundary, beside the first dispatch and the end
