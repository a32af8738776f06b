"""Benchmark 7: a long run of no-op tasks (10,000; `--quick` 2,000) in batches of 8, to see whether a
task costs the same at the end of a run as at its start: per-task cost and boundaries by tenth of the
run, the bytes Redis holds for the run as it grows, and `otto-farm status` on it at the end."""

from __future__ import annotations

import compileall
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from typing import Any

from harness import Bench, Refused, layered_set, log, timed
from stats import boundaries, fmt, med, pct, table, verdict

import otto_farm
from otto_farm import coordinator, keys, packed
from otto_farm.store import Store

WIDTH, CONC = 8, 2
SAMPLE_S = 1.0  # how often the run's keys are measured while it runs
STATUS_REPEATS = 5
# The run's logs: written once per task run or event, they grow with the tasks alone. The rest of the
# run's keys is its record, which a job or a boundary reads and writes.
LOGS = (keys.events_key, keys.results_key, keys.transcripts_key, keys.gates_key, keys.started_key)
TARGET_RATIO, TARGET_P50_MS, TARGET_RECORD_KIB, TARGET_STATUS_MS = 1.1, 40.0, 512.0, 300.0


def run_bytes(store: Store, run_id: str) -> dict[str, int]:
    """Bytes Redis holds for each key of the run (MEMORY USAGE, every element counted), by key name."""
    literal = "".join(f"\\{c}" if c in "*?[]\\" else c for c in run_id)  # a glob matching the id alone
    names = [keys.run_key(run_id), *store.redis.scan_iter(match=f"{keys.run_key(literal)}:*", count=1000)]
    with store.redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.memory_usage(name, samples=0)
        sizes = pipe.execute()
    return {name: size for name, size in zip(names, sizes, strict=True) if size is not None}


def largest_value(store: Store, names: list[str]) -> tuple[str, int]:
    """The largest value read or written whole among these keys (a string, or one field of a hash):
    what one job or boundary handles at most, now that the record is stored in parts."""
    best = ("", 0)
    for name in names:
        kind = store.redis.type(name)
        if kind in (b"string", "string"):
            best = max(best, (f"`{name}`", int(store.redis.strlen(name))), key=lambda x: x[1])
        elif kind in (b"hash", "hash"):
            for field, value in store.redis.hgetall(name).items():
                best = max(best, (f"`{name}` field `{field}`", len(value)), key=lambda x: x[1])
        elif kind in (b"list", "list"):
            for i, value in enumerate(store.redis.lrange(name, 0, -1)):
                best = max(best, (f"`{name}` element {i}", len(value)), key=lambda x: x[1])
    return best


@dataclass
class Sample:
    ts: float
    record: int  # bytes of the run's keys but its logs
    total: int  # bytes of all of the run's keys


@dataclass
class Watched:
    """A run followed to its end (or to the time budget): its events and the size samples."""

    run_id: str
    t0: float
    events: list[dict[str, str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    peak: dict[str, int] = field(default_factory=dict)  # the largest sample's bytes by key
    finished: bool = False


def watch(b: Bench, run_id: str, t0: float, budget_s: float) -> Watched:
    logs = {f(run_id) for f in LOGS}
    w = Watched(run_id, t0)
    last, last_sample = "0", 0.0
    deadline = time.monotonic() + budget_s

    def sample() -> None:
        sizes = run_bytes(b.store, run_id)
        s = Sample(time.time(), sum(v for k, v in sizes.items() if k not in logs), sum(sizes.values()))
        if not w.samples or s.record > max(x.record for x in w.samples):
            w.peak = sizes
        w.samples.append(s)

    while not w.finished and time.monotonic() < deadline:
        for eid, data in b.store.events(run_id, after=last, block_ms=1000):
            last = eid
            w.events.append(data)
            w.finished = w.finished or data["kind"] == "run_finished"
        if w.finished or time.monotonic() - last_sample >= SAMPLE_S:
            last_sample = time.monotonic()
            sample()
    return w


def tenths(w: Watched) -> list[dict[str, Any]]:
    """Per tenth of the batches that ended: ms per task (batch_started → the next one, or the run's
    end), the boundaries leaving its batches, and the record's size when it ended."""
    started = {
        int(e["batch"]): (float(e["ts"]), len(e["tasks"].split(",")))
        for e in w.events
        if e["kind"] == "batch_started"
    }
    ends = [float(e["ts"]) for e in w.events if e["kind"] == "run_finished"]
    spans = []  # (start, end, tasks) of each batch that ended
    for k in sorted(started):
        end = started[k + 1][0] if k + 1 in started else (ends[0] if ends else None)
        if end is not None:
            spans.append((started[k][0], end, started[k][1]))
    bounds = boundaries(w.events)
    out = []
    for i in range(10):
        part = spans[i * len(spans) // 10 : (i + 1) * len(spans) // 10]
        if not part:
            continue
        lo, hi = i * len(spans) // 10, (i + 1) * len(spans) // 10
        total = [x["total"] for x in bounds if lo <= x["batch"] < hi]
        sizes = [s.record for s in w.samples if s.ts <= part[-1][1]] or [w.samples[0].record]
        out.append(
            {
                "batches": f"{lo + 1}–{hi}",
                "per_task": sum(e - s for s, e, _ in part) / sum(n for _, _, n in part) * 1000,
                "p50": pct(total, 50),
                "p95": pct(total, 95),
                "record_kib": sizes[-1] / 1024,
            }
        )
    return out


def _on_a_terminal(argv: list[str], env: dict[str, str], cwd: Any) -> tuple[int, bytes]:
    """Run a command on a pseudo-terminal of 50 × 160, as a user at a terminal would: its exit and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        argv, env={**env, "TERM": "xterm"}, cwd=cwd, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the command has closed its side
            break
        if not chunk:
            break
        out.extend(chunk)
    os.close(master)
    return proc.wait(), bytes(out)


def status_ms(b: Bench, run_id: str, repeats: int, *flags: str, tty: bool = False) -> tuple[list[float], int]:
    """`otto-farm status RUN` in a new process, as a user runs it (on a terminal with `tty`, else
    piped): each run's ms, and its output's bytes."""
    argv = [sys.executable, "-m", "otto_farm", "status", run_id, *flags]
    out: list[float] = []
    size = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        if tty:
            code, stdout = _on_a_terminal(argv, b.farm_env(), b.root)
        else:
            proc = subprocess.run(argv, env=b.farm_env(), cwd=b.root, capture_output=True)
            code, stdout = proc.returncode, proc.stdout + proc.stderr
        out.append((time.perf_counter() - t0) * 1000)
        if code != 0:
            raise RuntimeError(f"{argv} exited {code}: {stdout.decode(errors='replace')[-2000:]}")
        size = len(stdout)
    return out, size


def record_json(store: Store, run_id: str) -> int:
    """Bytes of the run record's JSON, uncompressed (head, task set, task states, batches, plan): the
    unit of issue 17's 2,281 KiB, beside what Redis holds for it."""
    head = len(store.redis.get(keys.run_key(run_id)) or "")
    stored = store.redis.get(keys.taskset_key(run_id))
    taskset = len(packed.unsqueeze(stored)) if stored else 0
    values = [
        packed.unpack(raw)
        for name in (keys.states_key(run_id), keys.batch_records_key(run_id))
        for raw in store.redis.hvals(name)
    ]
    plan = store.redis.lrange(keys.plan_key(run_id), 0, -1)
    return (
        head
        + taskset
        + sum(len(k) + len(v) for part in values for k, v in part.items())
        + sum(map(len, plan))
    )


def bench_scale(b: Bench, n: int, budget_s: float) -> tuple[str, dict[str, Any]]:
    layers = n // WIDTH
    log(
        f"7. scale: {layers * WIDTH} no-op tasks in {layers} batches of {WIDTH}, -c {CONC} (budget {budget_s:.0f} s)"
    )
    worker = b.farm_worker(CONC)
    repo = b.tiny_repo("repo-scale")
    try:
        warm, _, _, _ = b.farm_run(layered_set(repo, 2, WIDTH), "warm-scale")
        run_id, t0 = b.start_run(layered_set(repo, layers, WIDTH), "scale")
        w = watch(b, run_id, t0, budget_s)
        if not w.finished:
            coordinator.cancel(b.store, run_id)  # its queued jobs must not slow the benchmarks after it
    finally:
        b.stop(worker)
    rows = tenths(w)
    ended = w.events[-1] if w.finished else {}
    if w.finished and ended.get("status") != "passed":
        raise RuntimeError(f"scale run {run_id} ended {ended.get('status')}: {ended.get('error')}")
    peak = max(w.samples, key=lambda s: s.record)
    peak_total = max(s.total for s in w.samples)
    md = [
        f"### 7. Scale ({layers * WIDTH} no-op tasks, {layers} batches of {WIDTH} in a chain of layers, `-c {CONC}`)",
        "",
        f"Makespan {float(w.events[-1]['ts']) - t0:.1f} s. By tenth of the batches: ms per task (a batch's "
        "`batch_started` → the next one's, or → `run_finished`, over its tasks), its boundaries (last "
        "`task_finished` → first `task_started` of the next batch, ms) and the run record's size when the "
        f"tenth ended (MEMORY USAGE of every key of the run but its logs, sampled every {SAMPLE_S:.0f} s):",
        "",
        table(
            ["batches", "ms per task", "boundary p50", "p95", "record KiB"],
            [
                [
                    r["batches"],
                    f"{r['per_task']:.1f}",
                    f"{r['p50']:.0f}",
                    f"{r['p95']:.0f}",
                    f"{r['record_kib']:.0f}",
                ]
                for r in rows
            ],
        ),
        "",
        f"Peak run record {peak.record / 1024:.0f} KiB; all of the run's keys at their largest, logs "
        f"(events, results, transcripts, gate checks, job starts) included, {peak_total / 1024:.0f} KiB. By key at the "
        "record's peak:",
        "",
        table(
            ["key", "KiB"],
            [[f"`{k}`", f"{v / 1024:.1f}"] for k, v in sorted(w.peak.items(), key=lambda kv: -kv[1])],
        ),
    ]
    if not w.finished:
        reason = f"the run did not finish in {budget_s:.0f} s ({len(rows)} tenths of its batches ended)"
        raise Refused(reason, "\n".join([*md, "", f"**Refused:** {reason}."]))
    logs = {f(run_id) for f in LOGS}
    biggest = largest_value(b.store, [k for k in run_bytes(b.store, run_id) if k not in logs])
    # The package's bytecode written, as an installed package has it: this machine sets
    # PYTHONDONTWRITEBYTECODE, so an editable install would compile every module at each start.
    compileall.compile_dir(os.path.dirname(otto_farm.__file__), quiet=1)
    # On a terminal (the case: what fits the screen) and piped (every row) alternate.
    status, status_out, piped, piped_out = [], 0, [], 0
    for _ in range(STATUS_REPEATS):
        ms, status_out = status_ms(b, run_id, 1, tty=True)
        status += ms
        ms, piped_out = status_ms(b, run_id, 1)
        piped += ms
    floor, _ = status_ms(b, warm.run_id, STATUS_REPEATS, tty=True)
    as_json, json_out = status_ms(b, run_id, 1, "--json")
    get_ms = [timed(lambda: b.store.get(run_id, tasks=())) for _ in range(STATUS_REPEATS)]
    json_kib = record_json(b.store, run_id) / 1024
    res = {
        "n": layers * WIDTH,
        "ratio": rows[-1]["per_task"] / rows[0]["per_task"],
        "p50": (rows[0]["p50"], rows[-1]["p50"]),
        "p95": (rows[0]["p95"], rows[-1]["p95"]),
        "record_kib": peak.record / 1024,
        "json_kib": json_kib,
        "value_kib": biggest[1] / 1024,
        "status_ms": med(status),
        "piped_ms": med(piped),
        "startup_ms": med(floor),
    }
    md += [
        "",
        f"The largest value of the record at the end, read or written whole (a key, or one field of a "
        f"hash): {biggest[0]}, {res['value_kib']:.1f} KiB. The record as JSON at the end (head, task "
        f"set, task states, batches: the unit issue 17 measured its 2,281 KiB in): {json_kib:.0f} KiB.",
        "",
        table(
            ["`otto-farm status` (a new process; ms)", "median (min–max)", "output"],
            [
                [
                    f"on this run, on a terminal of 50 rows (what fits), {STATUS_REPEATS} times",
                    fmt(status, 0),
                    f"{status_out / 1024:.0f} KiB",
                ],
                [
                    f"on this run, piped (every row), {STATUS_REPEATS} times",
                    fmt(piped, 0),
                    f"{piped_out / 1024:.0f} KiB",
                ],
                [
                    f"on the warm-up run ({2 * WIDTH} tasks), on a terminal: start-up and imports",
                    fmt(floor, 0),
                    "",
                ],
                ["`--json` on this run, once", fmt(as_json, 0), f"{json_out / 1024:.0f} KiB"],
                [
                    "`Store.get` of the run's task states, as a terminal's status reads them (in this process)",
                    fmt(get_ms, 0),
                    "",
                ],
            ],
        ),
        "",
        f"Targets (set for 10,000 tasks; measured at {res['n']}): per-task cost, last tenth / first ≤ "
        f"{TARGET_RATIO} → {res['ratio']:.2f} ({verdict(res['ratio'] <= TARGET_RATIO)}); boundary p50 at "
        f"the end ≤ {TARGET_P50_MS:.0f} ms → {res['p50'][1]:.0f} ms ({verdict(res['p50'][1] <= TARGET_P50_MS)}); "
        f"peak run record ≤ {TARGET_RECORD_KIB:.0f} KiB → {res['record_kib']:.0f} KiB "
        f"({verdict(res['record_kib'] <= TARGET_RECORD_KIB)}); `status` ≤ {TARGET_STATUS_MS:.0f} ms → "
        f"{res['status_ms']:.0f} ms ({verdict(res['status_ms'] <= TARGET_STATUS_MS)}).",
    ]
    return "\n".join(md), res
