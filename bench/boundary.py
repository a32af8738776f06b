"""Benchmark 2: the batch boundary when batches fail, with the pilot off (replan) and with a scripted
pilot answering at once; the no-pilot series comes from benchmark 1's runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import Bench, layered_set, log
from stats import boundaries, med, pct, table, verdict

from otto_farm.scripted_server import ScriptedReply


def pilot_set(repo: Path, layers: int, pilot: bool) -> dict[str, Any]:
    """Per layer k: p_k passes (p_k depends on p_{k-1}), f_k fails its verify (f_k depends on p_{k-1})."""
    tasks = []
    for k in range(layers):
        dep = {"depends_on": [f"p{k - 1}"]} if k else {}
        tasks.append({"key": f"p{k}", "prompt": f"pass {k}", **dep})
        tasks.append({"key": f"f{k}", "prompt": f"fail {k}", "verify": "false", **dep})
    return {
        "name": "bench-pilot",
        "repo": str(repo),
        "verify": "true",
        "max_attempts": 1,
        "max_task_runs": 1,
        "max_batch_size": 10,
        "agent": {"command": "true"},
        "pilot": {"enabled": pilot},
        "tasks": tasks,
    }


def pilot_answers(layers: int) -> list[ScriptedReply]:
    """One valid answer per failing batch: nothing to retry, the remaining layers as they are."""
    out = []
    for k in range(layers - 1):
        rest = [[f"p{j}", f"f{j}"] for j in range(k + 1, layers)]
        out.append(
            ScriptedReply(
                tool_input={
                    "failure_analysis": {
                        f"f{k}": {"category": "code_bug", "explanation": "verify is `false`"}
                    },
                    "retry_strategies": {},
                    "routed_context": [],
                    "skip_tasks": [],
                    "new_learnings": [],
                    "batches": rest,
                }
            )
        )
    return out


def bench_boundary(
    b: Bench, repeats: int, no_pilot_bounds: list[dict[str, float]], layers: int
) -> tuple[str, dict[str, Any]]:
    log(
        f"2. batch boundary with failing batches: {layers} layers, pilot off / scripted pilot, {repeats} repeats"
    )
    farm_w = b.farm_worker(2)
    repo = b.tiny_repo("repo-pilot")
    series: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    outcomes: list[str] = []
    reasons: list[str] = []
    try:
        b.farm_run(layered_set(repo, 2, 2), "warm-pilot")
        for r in range(repeats):
            for mode in ("off", "on"):
                b.llm.script(*pilot_answers(layers))
                record, events, _, _ = b.farm_run(pilot_set(repo, layers, mode == "on"), f"pilot-{mode}{r}")
                series[mode] += boundaries(events)
                if mode == "on":
                    outcomes += [bt.pilot.outcome for bt in record.batches if bt.pilot]
                    reasons += [bt.pilot.reason for bt in record.batches if bt.pilot and bt.pilot.reason]
    finally:
        b.stop(farm_w)
    applied = sum(o == "applied" for o in outcomes)

    def row(label: str, bs: list[dict[str, float]]) -> list[Any]:
        tot = [x["total"] for x in bs]
        if not tot:
            return [label, 0, "n/a (run with overhead)", "", "", "", "", ""]
        return [
            label,
            len(tot),
            f"{pct(tot, 50):.1f}",
            f"{pct(tot, 95):.1f}",
            f"{min(tot):.1f}–{max(tot):.1f}",
            f"{med([x['to_merged'] for x in bs]):.1f}",
            f"{med([x['merged_to_dispatch'] for x in bs]):.1f}",
            f"{med([x['dispatch_to_start'] for x in bs]):.1f}",
        ]

    p50 = pct([x["total"] for x in no_pilot_bounds], 50)
    md = [
        "### 2. Batch-boundary latency (last `task_finished` of batch k → first `task_started` of batch k+1)",
        "",
        table(
            [
                "case",
                "boundaries",
                "p50 ms",
                "p95 ms",
                "min–max ms",
                "median: → batch_merged",
                "batch_merged → batch_started (gate, decide, pilot)",
                "batch_started → task_started (queue)",
            ],
            [
                row("all pass, no pilot (the runs of benchmark 1)", no_pilot_bounds),
                row("a failure per batch, pilot off (replan)", series["off"]),
                row("a failure per batch, scripted pilot answering at once", series["on"]),
            ],
        ),
        "",
        f"Pilot answers applied: {applied} of {len(outcomes)}"
        + (
            f" (others: {sorted(set(outcomes) - {'applied'})}; first reason: {reasons[0][:200]!r})."
            if applied < len(outcomes) and reasons
            else "."
        ),
        f"Target: p50 ≤ 25 ms without the pilot → measured {p50:.1f} ms ({verdict(p50 <= 25)}).",
    ]
    return "\n".join(md), {"p50": p50}
