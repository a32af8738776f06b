"""Faults under a running farm: Redis killed, a task worker's pool process killed mid-job, the control
worker's pool process killed mid-merge (and `cancel` during that outage)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path

from harness import drop_pending, log

from faultlib.farm import Farm, Row, event_times, run_id_of, secs, wait_for, wait_run
from otto_farm import celery_app, coordinator, taskset
from otto_farm.embedded import Embedded
from otto_farm.lease import LOCK_TTL_S
from otto_farm.models import RunStatus
from otto_farm.settings import Settings

FOUR_THEN_ONE = [
    *({"key": k, "prompt": "p"} for k in ("a", "b", "c", "d")),
    {"key": "e", "prompt": "p", "depends_on": ["a", "b"]},
]


def redis_killed(f: Farm, quick: bool) -> list[Row]:
    outage_s = 5.0 if quick else 10.0
    repo = f.repo()
    path = f.taskset(repo, "sleep 6; touch $OTTO_FARM_TASK_KEY.txt", FOUR_THEN_ONE, max_task_runs=1)
    assert f.otto("up", "--workers", "4").returncode == 0
    run_id = run_id_of(f.otto("submit", str(path), "--no-wait").stdout)
    wait_for(f.agent_started, what="an agent")
    os.kill(int((f.home / "redis.pid").read_text()), signal.SIGKILL)
    time.sleep(outage_s)
    back = f.otto("up", "--workers", "4")  # Redis again from its AOF; the workers are still up
    assert back.returncode == 0, back.stderr
    t_back = time.time()
    with f.store() as store:
        record = wait_run(store, run_id)
        results = [t for t in event_times(store, run_id, "task_finished") if t > t_back]
        ended = event_times(store, run_id, "run_finished")
    runs = ", ".join(f"{k} {t.runs}" for k, t in record.tasks.items())
    starts, _ = f.agent_runs()
    recovery = secs(min(results) - t_back, "the next task result") if results else "no task result after"
    return [
        Row(
            "Redis killed mid-batch",
            f"SIGKILL the embedded Redis while 4 agents run (`max_task_runs: 1`); `otto-farm up` starts it "
            f"again {outage_s:.0f} s later",
            f"run {record.status.value}",
            **f.figures(record, repo),
            recovery=recovery + (f"; {ended[-1] - t_back:.1f} s to the run's end" if ended else ""),
            notes=f"task runs: {runs}; agent starts {sum(starts.values())} for {len(record.tasks)} tasks",
        )
    ]


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def child_pids(pid: int) -> list[int]:
    """From the kernel's children lists, not a scan of /proc: cheap enough for a 2 ms poll."""
    out: list[int] = []
    with suppress(OSError):  # the process, or one of its threads, is gone
        for path in Path(f"/proc/{pid}/task").glob("*/children"):
            out += [int(c) for c in path.read_text().split()]
    return out


def cmdline(pid: int) -> list[str]:
    with suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def pool_process(agent_pid: int, worker_pid: int) -> int:
    """The worker's pool process running the agent: the agent's ancestor whose parent is the worker."""
    pid = agent_pid
    while (up := parent(pid)) != worker_pid:
        if up <= 1:
            raise RuntimeError(f"agent {agent_pid} does not run under worker {worker_pid}")
        pid = up
    return pid


def worker_killed(f: Farm, quick: bool) -> list[Row]:
    repo = f.repo()
    tasks = [
        {"key": "a", "prompt": "p"},
        {"key": "b", "prompt": "p"},
        {"key": "c", "prompt": "p", "depends_on": ["a"]},
    ]
    path = f.taskset(repo, "sleep 5; touch $OTTO_FARM_TASK_KEY.txt", tasks)
    assert f.otto("up", "--workers", "2").returncode == 0
    run_id = run_id_of(f.otto("submit", str(path), "--no-wait").stdout)
    wait_for(f.agent_started, what="an agent")
    line = f.agent_log.read_text().split("\n")[0].split()
    victim, agent_pid = line[1], int(line[2])
    os.kill(pool_process(agent_pid, int((f.home / "workers.pid").read_text())), signal.SIGKILL)
    t_kill = time.time()
    with f.store() as store:
        record = wait_run(store, run_id)
        again = [
            float(e["ts"])
            for _, e in store.events(run_id)
            if e.get("task") == victim and e["kind"] == "task_started"
        ]
        ended = event_times(store, run_id, "run_finished")
    starts, ends = f.agent_runs()
    restart = (
        secs(again[-1] - t_kill, f"{victim}'s next start")
        if len(again) > 1
        else f"{victim} never started again"
    )
    return [
        Row(
            "Task worker killed mid-job",
            "SIGKILL the pool process running an agent (`up --workers 2`, default lease 30 s, sweep 10 s)",
            f"run {record.status.value}",
            **f.figures(record, repo),
            recovery=restart + (f"; {ended[-1] - t_kill:.1f} s to the run's end" if ended else ""),
            notes=f"{victim}: runs {record.tasks[victim].runs}, agent started {starts[victim]}, finished {ends[victim]}",
        )
    ]


class MergeKiller(threading.Thread):
    """Watches the control worker's pool processes and SIGKILLs the one that runs `git merge`."""

    def __init__(self, worker_pid: int) -> None:
        super().__init__(daemon=True)
        self.worker_pid = worker_pid
        self.killed_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pool in child_pids(self.worker_pid):
                if any(cmdline(c)[:1] == ["git"] and "merge" in cmdline(c) for c in child_pids(pool)):
                    os.kill(pool, signal.SIGKILL)
                    self.killed_at = time.time()
                    return
            time.sleep(0.002)


def control_killed(f: Farm, quick: bool, cancel: bool = False) -> list[Row]:
    repo = f.repo(files=200 if quick else 2000)  # a real tree to merge: the window is a few 100 ms
    path = f.taskset(repo, "sleep 1; echo $OTTO_FARM_TASK_KEY > $OTTO_FARM_TASK_KEY.txt", FOUR_THEN_ONE)
    f.start_redis()
    celery_app.configure(Embedded(Settings(home=f.home)).settings)
    tasks_w = f.start(
        "worker", "--queues", "otto.tasks,otto.pilot", "--concurrency", "2", "--hostname", "tasks@%h"
    )
    control = f.start("worker", "--queues", "otto.control", "--concurrency", "1", "--hostname", "control@%h")
    for name in ("tasks", "control"):
        node = [f"{name}@{socket.gethostname()}"]
        wait_for(
            lambda n=node: celery_app.app.control.ping(destination=n, timeout=0.5), what=f"{name} worker"
        )
    killer = MergeKiller(control.pid)  # `otto-farm worker` became the Celery worker (exec)
    killer.start()
    with f.store() as store:
        run_id = coordinator.start(store, taskset.load(path)).run_id
        drop_pending(celery_app.app)  # nobody here waits on the chord's results
        wait_for(lambda: killer.killed_at is not None, timeout_s=120, what="a merge on the control worker")
        assert killer.killed_at is not None
        if cancel:
            t0 = time.monotonic()
            answer = f.otto("cancel", run_id, timeout=60)
            latency = time.monotonic() - t0
            time.sleep(LOCK_TTL_S + 10)  # the callback comes back once the dead lock lapses
            record = store.get(run_id)
        else:
            record = wait_run(store, run_id)
        merged = [
            t - killer.killed_at for t in event_times(store, run_id, "batch_merged") if t > killer.killed_at
        ]
        ended = event_times(store, run_id, "run_finished")
    killer.stop.set()
    log(f"workers alive after the kill: tasks {tasks_w.poll() is None}, control {control.poll() is None}")
    fig = f.figures(record, repo, cancelled=cancel)
    if cancel:
        return [
            Row(
                "`cancel` while the control worker is lost mid-merge",
                "as above, then `otto-farm cancel RUN` at once",
                f"cancel exit {answer.returncode}; run {record.status.value} {LOCK_TTL_S + 10:.0f} s later",
                **fig,
                recovery=secs(latency, "`cancel`'s answer"),
                notes="a callback after the cancel left it cancelled"
                if record.status is RunStatus.cancelled
                else f"cancel undone: {record.status.value}",
            )
        ]
    to_end = f"; {ended[-1] - killer.killed_at:.1f} s to the run's end" if ended else ""
    return [
        Row(
            "Control worker killed mid-merge",
            "SIGKILL the control worker's pool process (`-Q otto.control -c 1`) while it runs `git merge`",
            f"run {record.status.value}",
            **fig,
            recovery=(secs(merged[0], "the batch merged") if merged else "never merged") + to_end,
            notes=f"callback lock lease {LOCK_TTL_S:.0f} s",
        )
    ]


def control_killed_then_cancel(f: Farm, quick: bool) -> list[Row]:
    return control_killed(f, quick, cancel=True)
