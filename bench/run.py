"""otto-farm benchmarks (issues 7 and 17): the farm against plain Celery on the same embedded Redis, in one run.

    python bench/run.py --quick            # a sanity pass of every benchmark, about six minutes
    python bench/run.py --out results.md   # the full run
    python bench/run.py --only overhead,git
    python bench/run.py --only scale --quick

Starts its own embedded Redis (otto_farm.embedded), its own `celery worker` processes (the farm's and a
plain-Celery baseline from bench/baseline.py), a scripted Messages-API server for the pilot, and temp
repositories; all of it is removed at exit, also on error. Prints a Markdown table per benchmark.
One module per benchmark (overhead, boundary, scaling, worktrees, memory, gate, scale) on a shared
harness (harness.py: processes and runs; stats.py: the numbers); this one only chooses and reports.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark modules, also under `python -m`

from boundary import bench_boundary  # noqa: E402
from gate import bench_gate  # noqa: E402
from harness import Refused, bench_env, log, machine  # noqa: E402
from memory import bench_memory  # noqa: E402
from overhead import bench_overhead  # noqa: E402
from scale import TARGET_P50_MS, TARGET_RATIO, TARGET_RECORD_KIB, TARGET_STATUS_MS, bench_scale  # noqa: E402
from scaling import bench_scaling  # noqa: E402
from stats import table, verdict  # noqa: E402
from worktrees import bench_git  # noqa: E402

NAMES = ("overhead", "boundary", "scaling", "git", "memory", "gate", "scale")
SCALE_S_PER_TASK = 0.3  # the scale run's default time budget, per task


def summarise(name: str, res: dict[Any, Any], summary: list[list[Any]]) -> None:
    """Add a benchmark's rows to the summary table: target, wanted, measured, met or missed."""
    if name == "overhead":
        summary.append(
            [
                "1. farm queueing part / plain Celery per task",
                "≤ 1.5×",
                f"{res['qratio']:.1f}×",
                verdict(res["qratio"] <= 1.5),
            ]
        )
        summary.append(
            ["1. farm whole per-task cost / plain Celery (incl. git)", "—", f"{res['ratio']:.1f}×", ""]
        )
    elif name == "boundary" and res["p50"] == res["p50"]:  # not nan: the overhead runs gave the series
        summary.append(
            ["2. boundary p50, no pilot", "≤ 25 ms", f"{res['p50']:.1f} ms", verdict(res["p50"] <= 25)]
        )
    elif name == "scaling":
        top = max(res["eff"])
        e = res["eff"][top]
        summary.append(
            [f"3. efficiency at -c {top} ({res['n']} tasks)", "≥ 85 %", f"{e:.0f} %", verdict(e >= 85)]
        )
        sp = res["spread"]
        summary.append(
            [
                f"3. efficiency at {sp['procs']} worker processes × -c {sp['c']} ({res['n']} tasks)",
                "≥ 85 %",
                f"{sp['eff']:.0f} %",
                verdict(sp["eff"] >= 85),
            ]
        )
    elif name == "git" and 10000 in res:
        r = res[10000]
        summary.append(
            [
                "4. warm job / floor, 10k files",
                "≤ 1.5×",
                f"{r['floor_ratio']:.2f}×",
                verdict(r["floor_ratio"] <= 1.5),
            ]
        )
        summary.append(
            [
                "4. warm job / fresh worktree, 10k files",
                "≤ 5 %",
                f"{r['wt_pct']:.1f} %",
                verdict(r["wt_pct"] <= 5),
            ]
        )
    elif name == "memory":
        s = res["samples"]
        rss = f"{s[0][1] / 1024:.1f} → {s[-1][1] / 1024:.1f} ({max(x[1] for x in s) / 1024:.1f}) MiB"
        summary.append(["5. worker main RSS first → last (max)", "flat", rss, ""])
    elif name == "gate":
        on, off = res["p50"]["on"], res["p50"]["off"]
        summary.append(
            [
                "6. boundary p50 (→ batch_started), gate on / off",
                "—",
                f"{on:.1f} / {off:.1f} ms ({on - off:+.1f} ms)",
                "",
            ]
        )
        for cmd, (par, seq) in res["search"].items():
            summary.append(
                [
                    f"6. culprit search, 8 tasks, gate `{cmd}`: prefixes at once / bisection",
                    "—",
                    f"{par:.0f} / {seq:.0f} ms ({par / seq:.2f}×)",
                    "",
                ]
            )
    elif name == "scale":
        n = f"{res['n']:,} tasks"
        (p50a, p50b), (p95a, p95b) = res["p50"], res["p95"]
        summary += [
            [
                f"7. per-task cost, last 10 % of batches / first 10 % ({n})",
                f"≤ {TARGET_RATIO} at 10,000",
                f"{res['ratio']:.2f}",
                verdict(res["ratio"] <= TARGET_RATIO),
            ],
            [
                f"7. boundary p50 (p95), first → last 10 % ({n})",
                f"p50 ≤ {TARGET_P50_MS:.0f} ms at 10,000",
                f"{p50a:.0f} ({p95a:.0f}) → {p50b:.0f} ({p95b:.0f}) ms",
                verdict(p50b <= TARGET_P50_MS),
            ],
            [
                f"7. peak run record ({n})",
                f"≤ {TARGET_RECORD_KIB:.0f} KiB at 10,000",
                f"{res['record_kib']:.0f} KiB in Redis; as JSON {res['json_kib']:.0f} KiB",
                verdict(res["record_kib"] <= TARGET_RECORD_KIB),
            ],
            [
                f"7. of which the largest value read or written whole ({n})",
                "—",
                f"{res['value_kib']:.1f} KiB",
                "",
            ],
            [
                f"7. `otto-farm status` at the end, on a terminal ({n})",
                f"≤ {TARGET_STATUS_MS:.0f} ms",
                f"{res['status_ms']:.0f} ms (start-up alone {res['startup_ms']:.0f}; piped, every row: "
                f"{res['piped_ms']:.0f})",
                verdict(res["status_ms"] <= TARGET_STATUS_MS),
            ],
        ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a sanity pass of every benchmark (~6 min)")
    ap.add_argument(
        "--repeats",
        type=int,
        help="repeats per measurement (default 2 with --quick, else 5; --quick measures scaling once)",
    )
    ap.add_argument("--only", help="comma list of: " + ",".join(NAMES))
    ap.add_argument("--scale-tasks", type=int, help="tasks in the scale run (default 10000; --quick 2000)")
    ap.add_argument(
        "--scale-budget",
        type=float,
        help=f"seconds the scale run may take before it is stopped and refused (default {SCALE_S_PER_TASK} a task)",
    )
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    only = set((args.only or ",".join(NAMES)).split(","))
    if unknown := sorted(only - set(NAMES)):
        ap.error(f"--only: unknown benchmark {', '.join(unknown)} (known: {', '.join(NAMES)})")
    # `timeout` and friends send SIGTERM: turn it into SystemExit so the cleanup in bench_env runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    scale_n = args.scale_tasks or (2000 if quick else 10000)
    cmd = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sections: list[str] = []
    summary: list[list[Any]] = []
    failed = False
    t_start = time.time()
    with bench_env() as b:
        sections.append(
            f"Command: `{cmd.strip()}` — {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n{machine(b.store)}"
        )
        bounds: list[dict[str, float]] = []
        n, levels = (16, [4, 16]) if quick else (64, [1, 2, 4, 8, 16])
        runs: dict[str, Callable[[], tuple[str, dict[Any, Any]]]] = {
            "overhead": lambda: bench_overhead(b, repeats, 10 if quick else 20),
            "boundary": lambda: bench_boundary(b, repeats, bounds, 5 if quick else 10),
            "scaling": lambda: bench_scaling(b, 1 if quick else repeats, n, levels),
            "git": lambda: bench_git(
                b, repeats, [1000, 10000] if quick else [1000, 10000, 50000], 100 if quick else 2000
            ),
            "memory": lambda: bench_memory(b, 200 if quick else 1000),
            "gate": lambda: bench_gate(b, repeats, 10 if quick else 20),
            "scale": lambda: bench_scale(b, scale_n, args.scale_budget or scale_n * SCALE_S_PER_TASK),
        }
        for name in (x for x in NAMES if x in only):
            try:
                md, res = runs[name]()
            except Refused as exc:
                failed = True
                sections.append(exc.md.replace("\n", f": FAILED ({exc.reason})\n", 1))
                print(sections[-1] + "\n", file=sys.stderr, flush=True)
                summary.append([f"{name}: FAILED", "", exc.reason, ""])
                log(f"{name} refused: {exc.reason}")
                continue
            except Exception:
                failed = True
                sections.append(f"### {name}: FAILED\n\n```\n{traceback.format_exc()[-3000:]}\n```")
                summary.append([f"{name}: FAILED", "", "crashed (traceback in its section)", ""])
                log(f"{name} failed:\n{traceback.format_exc()}")
                continue
            sections.append(md)
            print(md + "\n", file=sys.stderr, flush=True)
            if name == "overhead":
                bounds = res["bounds"]
            summarise(name, res, summary)
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
