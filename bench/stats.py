"""The benchmarks' numbers: medians and percentiles, Markdown tables, CPU and memory read from /proc, and
the timings the farm's event stream gives (batch boundaries, gate rounds)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
GATE_ENDS = ("gate_passed", "gate_failed", "gate_flaky")  # a gate round's callback emits one per check


def fmt(values: list[float], digits: int = 1) -> str:
    """median (min–max)"""
    if not values:
        return "n/a"
    mid = statistics.median(values)
    if len(values) == 1:
        return f"{mid:.{digits}f}"
    return f"{mid:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


# ------------------------------------------------------------------------------------------------ /proc


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of a process: its own (user + system), and that of its children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) / CLK_TCK for x in fields[11:15])
    return utime + stime, cutime + cstime


@dataclass
class CpuUse:
    """CPU used during a run: the workers' own processes, the commands they ran (git, agent, verify),
    and the Redis server."""

    python: float = 0.0
    commands: float = 0.0
    redis: float = 0.0


@contextmanager
def cpu_used(workers: int | list[int], redis_pid: int) -> Iterator[CpuUse]:
    """Measure the process trees of one worker or several, summed (their pool processes stay alive, so
    the commands they ran are in their reaped children's time), and Redis over the block."""
    tops = [workers] if isinstance(workers, int) else workers
    pids = [p for top in tops for p in (top, *children(top))]
    before = {p: cpu_s(p) for p in pids}
    redis_before = cpu_s(redis_pid)[0]
    use = CpuUse()
    yield use
    for p in pids:
        own, reaped = cpu_s(p)
        use.python += own - before[p][0]
        use.commands += reaped - before[p][1]
    use.redis = cpu_s(redis_pid)[0] - redis_before


def cpu_row(uses: list[CpuUse], n: int) -> list[str]:
    """Medians per task, in ms: Python, commands, Redis, total."""
    per = [[u.python / n * 1000, u.commands / n * 1000, u.redis / n * 1000] for u in uses]
    return [fmt([x[i] for x in per]) for i in range(3)] + [fmt([sum(x) for x in per])]


# ------------------------------------------------------------------------------------------- run events


def boundaries(events: list[dict[str, str]]) -> list[dict[str, float]]:
    """Per batch boundary k→k+1 (`batch`: k): last task_finished of k, batch_merged of k, its gate's last
    check event, batch_started and first task_started of k+1; in ms, from the events' `ts` (seconds with
    ms resolution: whole ms, so float error cannot put a 25 ms boundary past 25)."""
    last_fin: dict[int, float] = {}
    first_start: dict[int, float] = {}
    merged: dict[int, float] = {}
    gated: dict[int, float] = {}
    started: dict[int, float] = {}
    for e in events:
        ts, kind = float(round(float(e["ts"]) * 1000)), e["kind"]
        if kind in GATE_ENDS:
            gated[int(e["batch"])] = ts
        elif kind == "task_finished":
            b = int(e["batch"])
            last_fin[b] = max(last_fin.get(b, 0.0), ts)
        elif kind == "task_started":
            b = int(e["batch"])
            first_start[b] = min(first_start.get(b, ts), ts)
        elif kind == "batch_merged":
            merged[int(e["batch"])] = ts
        elif kind == "batch_started":
            started[int(e["batch"])] = ts
    out = []
    for b in sorted(last_fin):
        if b + 1 in first_start:
            out.append(
                {
                    "batch": float(b),
                    "total": first_start[b + 1] - last_fin[b],
                    "to_merged": merged.get(b, float("nan")) - last_fin[b],
                    "to_dispatch": started.get(b + 1, float("nan")) - last_fin[b],
                    "gate": gated.get(b, float("nan")) - merged.get(b, float("nan")),
                    "merged_to_dispatch": started.get(b + 1, float("nan")) - merged.get(b, float("nan")),
                    "dispatch_to_start": first_start[b + 1] - started.get(b + 1, float("nan")),
                }
            )
    return out


def gate_rounds(events: list[dict[str, str]]) -> dict[int, list[float]]:
    """Per batch (-1: the base), each gate round's wall time in s: `gate_started` → the last event of
    its checks (emitted by the round's callback, after it moved the branch or merged again)."""
    out: dict[int, list[float]] = {}
    start: dict[int, float] = {}
    for e in events:
        if e["kind"] == "gate_started":
            start[int(e["batch"])] = float(e["ts"])
            out.setdefault(int(e["batch"]), []).append(float("nan"))
        elif e["kind"] in GATE_ENDS:
            out[int(e["batch"])][-1] = float(e["ts"]) - start[int(e["batch"])]
    return out
