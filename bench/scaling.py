"""Benchmark 3: one batch of tasks sleeping 1 s at growing concurrency on one worker: the efficiency."""

from __future__ import annotations

from typing import Any

from harness import Bench, layered_set, log
from stats import cpu_row, cpu_used, fmt, gate_rounds, med, table, verdict


def bench_scaling(b: Bench, repeats: int, n: int, levels: list[int]) -> tuple[str, dict[str, Any]]:
    log(f"3. scaling: {n} tasks sleeping 1 s at -c {levels}, {repeats} repeats")
    repo = b.tiny_repo("repo-scaling")
    data = {
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
    rows = []
    effs: dict[int, float] = {}
    for k in levels:
        w = b.farm_worker(k)
        try:
            b.farm_run(layered_set(repo, 1, k), f"warm-scale{k}")  # each slot's worktree exists
            spans, uses, base_gate = [], [], []
            for r in range(repeats):
                with cpu_used(w.proc.pid, b.redis_pid) as use:
                    record, events, t0, t1 = b.farm_run(data, f"scale{k}-{r}")
                if record.status.value != "passed":
                    raise RuntimeError(f"scaling run ended {record.status}: {record.error}")
                spans.append(t1 - t0)
                base_gate.append(sum(gate_rounds(events).get(-1, [])))
                uses.append(use)
        finally:
            b.stop(w)
        ideal = n / k
        eff = [ideal / s * 100 for s in spans]
        effs[k] = med(eff)
        rows.append(
            [
                k,
                fmt(spans, 2),
                f"{ideal:.2f}",
                fmt(eff, 0),
                fmt([s - ideal for s in spans], 2),
                fmt(base_gate, 2),
                *cpu_row(uses, n),
            ]
        )
        log(f"   -c {k}: {med(spans):.2f} s (ideal {ideal:.2f})")
    top = max(levels)
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
        f"Target: efficiency ≥ 85 % at 16 → measured {effs[top]:.0f} % at {top} "
        f"({verdict(effs[top] >= 85)}).",
    ]
    return "\n".join(md), {"eff": effs, "n": n}
