"""Benchmark 3: one batch of tasks sleeping 1 s at growing concurrency on one worker, and the top
concurrency spread over 4 worker processes: the efficiency."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Bench, WorkerProc, log
from stats import CpuUse, cpu_row, cpu_used, fmt, gate_rounds, med, table, verdict

from otto_farm import celery_app

PROCS = 4  # issue 17's second setup: the top concurrency over this many worker processes
WARM_TRIES = 3
# kombu's BRPOP waits 1 s in Redis: one a worker sent just before its SIGSTOP is answered by then, so a
# stopped worker takes no job of the other setup's runs.
BRPOP_S = 2.0


@dataclass
class Setup:
    """Worker processes measured together, and what each of their runs gave."""

    label: str
    workers: list[WorkerProc]
    frozen: bool = False
    warm: bool = False
    spans: list[float] = field(default_factory=list)
    base_gate: list[float] = field(default_factory=list)
    uses: list[CpuUse] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # per run: jobs each worker started, "16/16/16/16"


def sleep_set(repo: Path, n: int) -> dict[str, Any]:
    """`n` independent tasks whose agent sleeps 1 s, in one batch."""
    return {
        "name": "bench-scaling",
        "repo": str(repo),
        "verify": "true",
        "max_attempts": 1,
        "max_task_runs": 1,
        "max_batch_size": n,
        "agent": {"command": "sleep 1"},
        "pilot": {"enabled": False},
        "tasks": [{"key": f"s{i}", "prompt": f"sleep {i}"} for i in range(n)],
    }


def per_worker(s: Setup, events: list[dict[str, str]]) -> list[int]:
    """Jobs each worker of the setup started in a run, from its `task_started` events."""
    got = Counter(e["worker"].split("@")[0] for e in events if e["kind"] == "task_started")
    return [got[w.name] for w in s.workers]


def switch(setups: list[Setup], on: Setup) -> None:
    """Let only `on`'s workers take jobs: the others are stopped (SIGSTOP), so they use no CPU either."""
    held = [s for s in setups if s is not on and not s.frozen]
    for s in held:
        for w in s.workers:
            os.killpg(w.proc.pid, signal.SIGSTOP)
        s.frozen = True
    if held:
        time.sleep(BRPOP_S)
    if on.frozen:
        for w in on.workers:
            os.killpg(w.proc.pid, signal.SIGCONT)
        on.frozen = False
        nodes = [f"{w.name}@{socket.gethostname()}" for w in on.workers]
        deadline = time.monotonic() + 30
        while len(celery_app.app.control.ping(destination=nodes, timeout=0.5)) < len(nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {nodes} did not answer after SIGCONT")


def warm_up(b: Bench, s: Setup, repo: Path, k: int) -> None:
    """Run k concurrent 1 s jobs until every worker ran k / its-count of them (prefetch 1: a worker
    reserves one job per slot), so every slot of every worker has its worktree and a process that ran."""
    want = k // len(s.workers)
    for attempt in range(WARM_TRIES):
        _, events, _, _ = b.farm_run(sleep_set(repo, k), f"warm-{s.workers[0].name}-{attempt}")
        got = per_worker(s, events)
        if all(g == want for g in got):
            s.warm = True
            return
        log(f"   {s.label}: warm-up {attempt + 1} spread its jobs {got}, not {want} each")


def measure(b: Bench, s: Setup, data: dict[str, Any], name: str) -> None:
    with cpu_used([w.proc.pid for w in s.workers], b.redis_pid) as use:
        record, events, t0, t1 = b.farm_run(data, name)
    if record.status.value != "passed":
        raise RuntimeError(f"scaling run ended {record.status}: {record.error}")
    s.spans.append(t1 - t0)
    s.base_gate.append(sum(gate_rounds(events).get(-1, [])))
    s.uses.append(use)
    s.jobs.append("/".join(map(str, per_worker(s, events))))


def bench_scaling(b: Bench, repeats: int, n: int, levels: list[int]) -> tuple[str, dict[str, Any]]:
    top = max(levels)
    per = top // PROCS
    log(f"3. scaling: {n} tasks sleeping 1 s at -c {levels} and {PROCS} × -c {per}, {repeats} repeats")
    repo = b.tiny_repo("repo-scaling")
    data = sleep_set(repo, n)
    rows = []
    effs: dict[int, float] = {}
    spread: Setup | None = None
    for k in levels:
        setups = [Setup(str(k), [b.farm_worker(k)])]
        try:
            if k == top:  # the same concurrency over PROCS processes, alternated with the one process
                spread = Setup(f"{top} ({PROCS} × -c {per})", [b.farm_worker(per) for _ in range(PROCS)])
                setups.append(spread)
            for s in setups:
                switch(setups, s)
                warm_up(b, s, repo, k)
            for r in range(repeats):
                for s in setups if r % 2 == 0 else setups[::-1]:  # ABBA: neither always runs first
                    switch(setups, s)
                    measure(b, s, data, f"scale{k}-{len(s.workers)}-{r}")
        finally:
            for s in setups:
                for w in s.workers:
                    if s.frozen:  # a stopped worker would sit on the SIGTERM
                        os.killpg(w.proc.pid, signal.SIGCONT)
                    b.stop(w)
        ideal = n / k
        for s in setups:
            eff = [ideal / x * 100 for x in s.spans]
            if s is not spread:
                effs[k] = med(eff)
            rows.append(
                [
                    s.label if s.warm else f"{s.label} (warm-up incomplete)",
                    fmt(s.spans, 2),
                    f"{ideal:.2f}",
                    fmt(eff, 0),
                    fmt([x - ideal for x in s.spans], 2),
                    fmt(s.base_gate, 2),
                    *cpu_row(s.uses, n),
                ]
            )
            log(f"   {s.label}: {med(s.spans):.2f} s (ideal {ideal:.2f})")
    spread_eff = med([n / top / x * 100 for x in spread.spans]) if spread else float("nan")
    md = [
        f"### 3. Scaling ({n} independent tasks, agent `sleep 1`, one batch; {repeats} repeats)",
        "",
        table(
            [
                "concurrency k",
                "makespan s",
                f"ideal {n}/k s",
                "efficiency %",
                "makespan − ideal s",
                "of which the base's gate check s",
                "CPU per job ms: Python",
                "commands",
                "Redis",
                "total",
            ],
            rows,
        ),
        "",
        f"At k = {top} the one-process and the {PROCS}-process runs alternate, ABBA over the repeats; the "
        f"setup not measured is stopped (SIGSTOP). Jobs per worker in the {PROCS}-process runs: "
        f"{', '.join(spread.jobs) if spread else 'n/a'}.",
        "",
        f"Target: efficiency ≥ 85 % at 16 on one worker → measured {effs[top]:.0f} % at {top} "
        f"({verdict(effs[top] >= 85)}).",
        f"Target: the same on {PROCS} worker processes → measured {spread_eff:.0f} % at {PROCS} × -c {per} "
        f"({verdict(spread_eff >= 85)}).",
    ]
    return "\n".join(md), {"eff": effs, "n": n, "spread": {"procs": PROCS, "c": per, "eff": spread_eff}}
