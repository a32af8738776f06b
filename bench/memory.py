"""Benchmark 5: the worker's memory (main process and prefork children) over a long run of no-ops."""

from __future__ import annotations

import time
from typing import Any

from harness import RUN_TIMEOUT_S, Bench, layered_set, log
from stats import children, rss_kb, table


def bench_memory(b: Bench, n: int) -> tuple[str, dict[str, Any]]:
    width = max(1, n // 20)
    log(f"5. memory: {n} no-op tasks in 20 batches of {width}, RSS sampled every 0.25 s")
    w = b.farm_worker(2)
    repo = b.tiny_repo("repo-memory")
    samples: list[tuple[float, int, int, int]] = []  # t, main RSS, children total, children max
    try:
        b.farm_run(layered_set(repo, 2, 2), "warm-mem")
        t0 = time.time()

        def sample() -> None:
            if samples and time.time() - t0 - samples[-1][0] < 0.25:
                return
            kids = [rss_kb(c) for c in children(w.proc.pid)]
            samples.append((time.time() - t0, rss_kb(w.proc.pid), sum(kids), max(kids, default=0)))

        sample()
        run_id, _ = b.start_run(layered_set(repo, 20, width), "memory")
        last, done = "0", False
        while not done:
            for eid, data in b.store.events(run_id, after=last, block_ms=250):
                last = eid
                done = done or data["kind"] == "run_finished"
            sample()
            if time.time() - t0 > RUN_TIMEOUT_S:
                raise RuntimeError("memory run did not finish")
        final = b.store.get(run_id)
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
