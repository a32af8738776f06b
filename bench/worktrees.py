"""Benchmark 4: the farm's warm job on big repositories against the git floor, a fresh worktree and a
fresh clone, timed in turn in every repeat so that none of them meets a slower disk than the others."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from harness import Bench, Refused, log, sh, timed
from stats import fmt, med, table, verdict

from otto_farm import gitops

MEASURES = ("clone", "worktree", "farm", "floor")  # timed in this order, rotated by one each repeat
# A worktree add over a clone by more than timing noise: the disk, not git, was timed (a clone does more).
REFUSE_RATIO = 1.1


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


def du_kb(path: Path) -> int:
    return int(sh(["du", "-sk", str(path)]).split()[0])


def bench_git(b: Bench, repeats: int, sizes: list[int], history: int) -> tuple[str, dict[Any, Any]]:
    repeats = -(-repeats // len(MEASURES)) * len(MEASURES)  # whole rotations: each step once in each place
    log(f"4. git floor: repos of {sizes} files, {history} commits of history, {repeats} repeats")
    rows, comp_rows = [], []
    res: dict[int, dict[str, float]] = {}
    refused: list[str] = []
    for size in sizes:
        d = b.root / f"git{size}"
        d.mkdir()
        src = d / "src.git"
        t_make = timed(lambda: synthetic_repo(src, size, history))
        log(f"   {size} files: synthetic repo in {t_make / 1000:.1f} s")
        cache = gitops.RepoCache(d / "work", str(src))
        sha = sh(["git", "rev-parse", "main"], cwd=src).strip()
        cold = gitops_job(cache, "cold", 0, sha)["total"]
        floor_clone = d / "floor"
        sh(["git", "clone", "-q", str(src), str(floor_clone)])
        gitops_job(cache, "warm0", 0, sha)  # the slot now sits on a task commit, as after a real job
        floor_job(floor_clone, "floor-warm", sha, 0)
        os.sync()  # the setup's writes, too, are not the first repeat's to pay for
        got: dict[str, list[float]] = {m: [] for m in MEASURES}
        warm: list[dict[str, float]] = []
        for r in range(repeats):
            clone, wt = d / f"clone{r}", d / f"wt{r}"

            def one(m: str) -> float:
                if m == "clone":
                    return timed(lambda: sh(["git", "clone", "-q", str(src), str(clone)]))
                if m == "worktree":
                    add = ["git", "worktree", "add", "-q", "--detach", str(wt), sha]
                    return timed(lambda: sh(add, cwd=cache.git_dir))
                if m == "farm":
                    warm.append(gitops_job(cache, f"warm{r + 1}", r + 1, sha))
                    return warm[-1]["total"]
                return floor_job(floor_clone, f"floor{r}", sha, r + 1)

            order = MEASURES[r % len(MEASURES) :] + MEASURES[: r % len(MEASURES)]
            for m in order:
                got[m].append(one(m))
            # Deleted after the repeat, and written out: the next repeat's first step would otherwise
            # pay for writing back these deletions (the rotation spreads what is left of it).
            shutil.rmtree(clone)
            sh(["git", "worktree", "remove", "--force", str(wt)], cwd=cache.git_dir)
            os.sync()
            log(
                f"   {size} files, repeat {r} ({', '.join(order)}): "
                + ", ".join(f"{m} {got[m][-1]:.0f} ms" for m in MEASURES)
            )
        disk = du_kb(d / "work") / 1024
        farm, floor, wt_ms, clone_ms = got["farm"], got["floor"], got["worktree"], got["clone"]
        core = [w["reset"] + w["commit"] for w in warm]
        r_floor = med(farm) / med(floor)
        r_wt = med(farm) / med(wt_ms) * 100
        res[size] = {"floor_ratio": r_floor, "wt_pct": r_wt, "core_ratio": med(core) / med(floor)}
        if med(wt_ms) > REFUSE_RATIO * med(clone_ms):
            refused.append(
                f"at {size} files a fresh `git worktree add` ({med(wt_ms):.0f} ms) cost over {REFUSE_RATIO}× a fresh "
                f"`git clone` ({med(clone_ms):.0f} ms), which does more: the disk, not git, was timed"
            )
        rows.append(
            [
                size,
                fmt(farm),
                fmt(floor),
                f"{r_floor:.2f}",
                f"{med(core) / med(floor):.2f}",
                fmt(wt_ms),
                f"{r_wt:.1f} %",
                fmt(clone_ms),
                f"{med(farm) / med(clone_ms) * 100:.1f} %",
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
        f"Each repeat times a fresh `git clone`, a fresh `git worktree add`, the farm's warm job and the floor "
        f"one after another, the order rotated by one each repeat (first repeat: {', '.join(MEASURES)}); the "
        "fresh trees are deleted after the repeat and the deletions written out (`sync`). A run where a "
        f"fresh worktree costs over {REFUSE_RATIO}× a fresh clone, which does more, is refused. The repeats "
        "are rounded up to whole rotations, so that each step is timed in each place equally often.",
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
                "farm / fresh clone",
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
    for size, r in res.items():
        md.append(
            f"Targets at {size} files: ≤ 1.5× the floor → {r['floor_ratio']:.2f}× "
            f"({verdict(r['floor_ratio'] <= 1.5)}); ≤ 5 % of a fresh worktree → "
            f"{r['wt_pct']:.1f} % ({verdict(r['wt_pct'] <= 5)})."
        )
    if refused:
        reason = "; ".join(refused)
        md += ["", f"**Refused:** {reason}."]
        raise Refused(reason, "\n".join(md))
    return "\n".join(md), res
