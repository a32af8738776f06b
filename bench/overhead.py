"""Benchmark 1: the farm's cost per no-op task against plain Celery's, on the same Redis, in one run."""

from __future__ import annotations

import os
import time
from typing import Any

import baseline
from harness import RUN_TIMEOUT_S, Bench, drop_pending, layered_set, log
from stats import CpuUse, boundaries, cpu_row, cpu_used, fmt, gate_rounds, med, table, verdict

from otto_farm.store import Store


def baseline_chain(store: Store, tag: str, layers: int, width: int) -> float:
    """Plain Celery: `layers` chords of `width` no-ops, each callback dispatching the next; seconds."""
    key = baseline.DONE_KEY.format(tag=tag)
    t0 = time.time()
    baseline.dispatch(tag, layers, width)
    drop_pending(baseline.app)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (done := store.redis.get(key)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("baseline chain did not finish")
        time.sleep(0.005)
    return float(done) - t0


def _last_merge(events: list[dict[str, str]]) -> float:
    """The final batch's callback (no next batch to start): last task_finished → batch_merged."""
    last_b = max(int(e["batch"]) for e in events if e["kind"] == "task_finished")
    fin = max(float(e["ts"]) for e in events if e["kind"] == "task_finished" and int(e["batch"]) == last_b)
    merged = [float(e["ts"]) for e in events if e["kind"] == "batch_merged" and int(e["batch"]) == last_b]
    return (merged[0] - fin) if merged else 0.0


def bench_overhead(b: Bench, repeats: int, layers: int) -> tuple[str, dict[str, Any]]:
    width, conc = 10, 2
    n = layers * width
    log(f"1/2. overhead: {layers} batches x {width} no-op tasks, -c {conc}, {repeats} repeats")
    base_w = b.baseline_worker(conc)
    farm_w = b.farm_worker(conc)
    repo = b.tiny_repo("repo-overhead")
    try:
        # warm-up: one small run each (the worker's repo cache, imports, connections)
        baseline_chain(b.store, "warm", 2, width)
        b.farm_run(layered_set(repo, 2, width), "warm")
        rows: dict[str, list[float]] = {
            k: [] for k in ("base", "farm", "job", "job_git", "merge", "gate", "rest")
        }
        cpu: dict[str, list[CpuUse]] = {"base": [], "farm": []}
        bounds: list[dict[str, float]] = []
        for r in range(repeats):
            with cpu_used(base_w.proc.pid, b.redis_pid) as use:
                base_s = baseline_chain(b.store, f"r{r}", layers, width)
            cpu["base"].append(use)
            with cpu_used(farm_w.proc.pid, b.redis_pid) as use:
                record, events, t0, t1 = b.farm_run(layered_set(repo, layers, width), f"overhead{r}")
            cpu["farm"].append(use)
            if record.status.value != "passed":
                raise RuntimeError(f"overhead run {record.run_id} ended {record.status}: {record.error}")
            results = [res for s in record.tasks.values() for res in s.results]
            job_s = sum(res.duration_s for res in results)
            attempts_s = sum(a.duration_s for res in results for a in res.attempts)
            bs = boundaries(events)
            bounds += bs
            merge_s = sum(x["to_merged"] for x in bs) / 1000 + _last_merge(events)
            gate_s = sum(sum(v) for v in gate_rounds(events).values())
            makespan = t1 - t0
            rows["base"].append(base_s / n * 1000)
            rows["farm"].append(makespan / n * 1000)
            rows["job"].append(job_s / conc / n * 1000)
            rows["job_git"].append((job_s - attempts_s) / conc / n * 1000)
            rows["merge"].append(merge_s / n * 1000)
            rows["gate"].append(gate_s / n * 1000)
            rows["rest"].append((makespan - job_s / conc - merge_s - gate_s) / n * 1000)
            log(f"   repeat {r}: baseline {base_s:.2f} s, farm {makespan:.2f} s")
    finally:
        b.stop(base_w)
        b.stop(farm_w)
    ratio = med(rows["farm"]) / med(rows["base"])
    qratio = med(rows["rest"]) / med(rows["base"])
    md = [
        f"### 1. Orchestration overhead ({n} no-op tasks, {layers} batches of {width}, `-c {conc}`, {repeats} repeats)",
        "",
        table(
            ["measure", "ms per task: median (min–max)", "× plain Celery"],
            [
                [
                    f"plain Celery: {layers} chained chords of {width} no-ops (makespan / N)",
                    fmt(rows["base"], 2),
                    "1.00",
                ],
                ["farm: whole run (makespan / N)", fmt(rows["farm"], 2), f"{ratio:.1f}"],
                ["  in jobs: Σ TaskResult.duration_s / c / N", fmt(rows["job"], 2), ""],
                [
                    "    of which outside the attempts (fetch, slot, reset, layout, head: git)",
                    fmt(rows["job_git"], 2),
                    "",
                ],
                [
                    "  in callbacks: last task_finished → batch_merged, / N (save results + git merge + push)",
                    fmt(rows["merge"], 2),
                    "",
                ],
                [
                    "  in the gate: its rounds, gate_started → gate_passed, / N (no-op tasks merge nothing: "
                    "only the base's check)",
                    fmt(rows["gate"], 2),
                    "",
                ],
                [
                    "  the rest: queueing, dispatch, store updates, events (makespan − jobs − merges − gate) / N",
                    fmt(rows["rest"], 2),
                    f"{qratio:.1f}",
                ],
            ],
        ),
        "",
        f"Target: queueing part ≤ 1.5× plain Celery's per-task cost → measured {qratio:.1f}× "
        f"({verdict(qratio <= 1.5)}).",
        "",
        f"CPU per task, ms (the worker's process tree and Redis, over each run; {os.cpu_count()} CPUs):",
        "",
        table(
            ["run", "worker processes (Python)", "commands they ran (git, agent, verify)", "Redis", "total"],
            [[label, *cpu_row(cpu[k], n)] for label, k in (("plain Celery", "base"), ("farm", "farm"))],
        ),
    ]
    return "\n".join(md), {"rows": rows, "bounds": bounds, "ratio": ratio, "qratio": qratio}
