"""Benchmark 6: the integration gate's cost at the boundary, and its culprit search (the prefixes of a
red batch checked at once) against a sequential bisection of the same commits."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from harness import RUN_TIMEOUT_S, Bench, drop_pending, layered_set, log
from stats import boundaries, fmt, gate_rounds, med, pct, table

from otto_farm import celery_app, chords
from otto_farm import gate as farm_gate
from otto_farm.models import RunRecord

SLOW_CHECK_S = 0.5  # the second gate command sleeps this long: a check that waits, not computes


def writing_set(repo: Path, layers: int, width: int, gate_cfg: dict[str, Any]) -> dict[str, Any]:
    """Benchmark 1's layers, but each task's agent writes a file of its own, so every batch merges
    something and its candidate goes through the gate (a no-op batch merges nothing: no gate)."""
    data = layered_set(repo, layers, width)
    data.update(name="bench-gate", gate=gate_cfg, agent={"command": 'echo 1 > "$OTTO_FARM_TASK_KEY.txt"'})
    return data


def culprit_set(repo: Path, n: int, check: str) -> dict[str, Any]:
    """One batch of n independent tasks, each writing c<i>.txt and passing its own verify; the gate
    command `check` fails once the last one's file is merged, and runs once per check (`retries: 0`)."""
    return {
        **writing_set(repo, 1, n, {"verify": check, "retries": 0}),
        "name": "bench-culprit",
        "tasks": [{"key": f"c{i}", "prompt": f"write c{i}.txt"} for i in range(1, n + 1)],
    }


def bisect(b: Bench, record: RunRecord, first_round: int) -> tuple[list[tuple[str, float, float]], int]:
    """A sequential bisection of batch 0's red candidate on the prefix commits its parallel search checked:
    one gate round of one check at a time, sent as the farm sends a round (`chords.send_gate`) and timed
    from the send to its callback's end (`date_done`). ([(label, wall s, the check's duration_s)], the
    culprit's position)."""
    state = record.batches[0].gate
    assert state is not None
    shas = {c.label: c.sha for c in state.checks if c.round == 1}
    lo, hi = 0, len(shas) + 1  # the base is green, the whole chain red
    steps: list[tuple[str, float, float]] = []
    while hi - lo > 1:
        mid, rnd = (lo + hi) // 2, first_round + len(steps)
        label = farm_gate.prefix_label(mid)
        done = celery_app.app.AsyncResult(f"{record.run_id}.b0.g{rnd}.done")
        t0 = time.time()
        chords.send_gate(record, 0, rnd, {label: shas[label]})
        drop_pending(celery_app.app)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not done.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate round {rnd} of {record.run_id} did not finish")
            time.sleep(0.005)
        check = b.store.gate_checks(record.run_id, 0, rnd, [label])[label]
        steps.append((label, done.date_done.timestamp() - t0, check.duration_s))
        lo, hi = (mid, hi) if check.passed else (lo, mid)
    return steps, hi


def bench_gate(b: Bench, repeats: int, layers: int) -> tuple[str, dict[str, Any]]:
    width, n = 2, 8
    log(
        f"6. gate: boundary on/off ({layers} batches x {width} tasks writing a file, -c 2); culprit search "
        f"({n} tasks, -c {n}) against a sequential bisection; {repeats} repeats"
    )
    repo = b.tiny_repo("repo-gate")
    modes: dict[str, dict[str, Any]] = {"on": {"verify": "true"}, "off": {"enabled": False}}
    series: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    w = b.farm_worker(2)
    try:
        for mode, gate_cfg in modes.items():
            b.farm_run(writing_set(repo, 2, width, gate_cfg), f"warm-gate-{mode}")
        for r in range(repeats):  # alternating, and which goes first too
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                data = writing_set(repo, layers, width, modes[mode])
                record, events, _, _ = b.farm_run(data, f"gate-{mode}{r}")
                if record.status.value != "passed":
                    raise RuntimeError(f"gate run {record.run_id} ended {record.status}: {record.error}")
                series[mode] += boundaries(events)
    finally:
        b.stop(w)
    w = b.farm_worker(n)  # the prefix round's n - 1 checks can all run at once
    checks = [f"! test -f c{n}.txt", f"sleep {SLOW_CHECK_S}; ! test -f c{n}.txt"]
    measures = ("whole", "r0", "r1", "seq", "seq_whole", "d1", "dseq")
    rows: dict[str, dict[str, list[float]]] = {c: {k: [] for k in measures} for c in checks}
    path: list[str] = []
    try:
        last, _, _, _ = b.farm_run(culprit_set(repo, n, checks[0]), "warm-culprit")
        for cmd, r in [(c, r) for c in checks for r in range(repeats)]:
            got = rows[cmd]
            for side in ("parallel", "bisect") if r % 2 == 0 else ("bisect", "parallel"):
                if side == "parallel":
                    last, events, _, _ = b.farm_run(
                        culprit_set(repo, n, cmd), f"culprit{checks.index(cmd)}-{r}"
                    )
                    state, rounds = last.batches[0].gate, gate_rounds(events)[0]
                    if state is None or list(state.culprits) != [f"c{n}"] or len(rounds) != 2:
                        raise RuntimeError(f"culprit run {last.run_id}: {last.status} {last.error}, {state}")
                    got["whole"].append(sum(rounds) * 1000)
                    got["r0"].append(rounds[0] * 1000)
                    got["r1"].append(rounds[1] * 1000)
                    got["d1"] += [c.duration_s * 1000 for c in state.checks if c.round == 1]
                    continue
                steps, found = bisect(b, last, 100 + 10 * r)  # on the latest run's commits
                if found != n:
                    raise RuntimeError(f"the bisection found c{found}, not c{n}")
                path = [x[0] for x in steps]
                got["seq"].append(sum(x[1] for x in steps) * 1000)
                got["dseq"] += [x[2] * 1000 for x in steps]
            got["seq_whole"].append(got["r0"][-1] + got["seq"][-1])
    finally:
        b.stop(w)

    def brow(mode: str) -> list[Any]:
        bs = series[mode]
        disp = [x["to_dispatch"] for x in bs]
        return [
            mode,
            len(bs),
            f"{pct(disp, 50):.1f}",
            f"{pct(disp, 95):.1f}",
            f"{min(disp):.1f}–{max(disp):.1f}",
            f"{med([x['to_merged'] for x in bs]):.1f}",
            f"{med([x['merged_to_dispatch'] for x in bs]):.1f}",
            f"{med([x['gate'] for x in bs]):.1f}" if mode == "on" else "—",
        ]

    p50 = {m: pct([x["to_dispatch"] for x in series[m]], 50) for m in modes}
    search = {c: (med(rows[c]["r1"]), med(rows[c]["seq"])) for c in checks}
    whole = {c: (med(rows[c]["whole"]), med(rows[c]["seq_whole"])) for c in checks}
    md = [
        f"### 6. The integration gate ({repeats} repeats)",
        "",
        f"Batch boundary (last `task_finished` of batch k → `batch_started` of k+1), gate on (gate command "
        f"`true`) against off: {layers} batches of {width} tasks, each writing a file of its own, so that every "
        "batch merges and is gated; one worker `-c 2`; on and off alternate, and which goes first (ms):",
        "",
        table(
            [
                "gate",
                "boundaries",
                "p50",
                "p95",
                "min–max",
                "median: → batch_merged (merge)",
                "batch_merged → batch_started",
                "of which the gate (→ gate_passed)",
            ],
            [brow("on"), brow("off")],
        ),
        "",
        f"p50 with the gate on − off: {p50['on'] - p50['off']:+.1f} ms ({p50['on'] / p50['off']:.2f}×).",
        "",
        f"Culprit search: one batch of {n} tasks, each writing its file and passing its own verify; the gate "
        f"command (`retries: 0`) is red once the last one, c{n}, is merged (so nothing is merged again after "
        f"it: the merges are the same for both ways). One worker `-c {n}`, {os.cpu_count()} CPUs. The farm "
        f"checks the full candidate (round 0, red), then its {n - 1} prefixes at once (round 1, whose callback "
        f"also moves the integration branch to p{n - 1}). Against it, a sequential bisection of the same "
        f"prefix commits ({', '.join(path)}: {len(path)} rounds of one check, one after another, each sent as "
        "the farm sends a round and timed from the send to the end of its callback, which finds the run over "
        "and moves nothing), alternating with the farm's run in each repeat. The second gate command sleeps "
        f"{SLOW_CHECK_S} s first: a check whose time is waiting, not this machine's CPU (ms):",
        "",
        table(
            ["measure", *(f"`{c}`" for c in checks)],
            [
                [label, *(fmt(rows[c][k]) for c in checks)]
                for label, k in (
                    ("farm: the batch's whole gate (round 0 + round 1)", "whole"),
                    ("  round 0: the full candidate, red (gate_started → gate_failed)", "r0"),
                    (f"  round 1: the {n - 1} prefixes at once (gate_started → the last gate_passed)", "r1"),
                    (f"sequential bisection: {len(path)} one-check rounds", "seq"),
                    ("the whole gate with the bisection instead (round 0 + the bisection)", "seq_whole"),
                    (f"a check's own time (duration_s), {n - 1} at once in round 1", "d1"),
                    ("a check's own time (duration_s), alone in the bisection", "dseq"),
                )
            ]
            + [
                [
                    "the search: prefixes at once / bisection",
                    *(f"{search[c][0] / search[c][1]:.2f}×" for c in checks),
                ],
                [
                    "the whole gate: farm / with the bisection",
                    *(f"{whole[c][0] / whole[c][1]:.2f}×" for c in checks),
                ],
            ],
        ),
    ]
    return "\n".join(md), {"p50": p50, "search": search}
