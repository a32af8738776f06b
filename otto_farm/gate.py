"""The integration gate: a batch's merged result passes the gate command before the integration branch
moves to it, so the branch only ever points at a commit that passed (bors's rule), and a red candidate's
culprit is found by checking the prefixes of its merge chain at once, on as many workers as there are.

`check` is the gate job's body (one commit, in a worktree slot and the task sandbox, like a task's
verify); `culprit` reads a prefix search. gating.py moves a batch through the gate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from otto_farm import gitops, sandbox, shell, taskrun, verify
from otto_farm.errors import OttoFarmError
from otto_farm.lease import DEFAULT_TTL_S, Lease, run_once
from otto_farm.models import BatchStatus, ChainLink, GateCheck, RunRecord
from otto_farm.sandbox import Command
from otto_farm.store import Store

FULL, BASE = "full", "base"  # the labels of a whole candidate's check and of the base's


def job_id(run_id: str, batch: int, round_no: int, label: str) -> str:
    """A gate job's Celery task id and lease name."""
    return f"{run_id}.base.gate" if batch < 0 else f"{run_id}.b{batch}.g{round_no}.{label}"


def candidate_branch(run_id: str) -> str:
    """Where a batch's merges wait for the gate; the integration branch moves to it once it passed."""
    return f"otto-farm/{run_id}/candidate"


def prefix_label(n: int) -> str:
    """The label of the check of a chain's first `n` merges."""
    return f"p{n}"


def waiting_round(record: RunRecord) -> tuple[int, int, dict[str, str]] | None:
    """The gate round the run waits on, as (batch, round, label → sha) with batch -1 for the base's
    check, or None: what the sweep finishes or sends again, and what `resume` sends."""
    if not record.batches:
        waits = record.taskset.gate.enabled and record.base_gate is None
        return (-1, 0, {BASE: record.base_sha}) if waits else None
    batch = record.batches[-1]
    if batch.status is BatchStatus.gating and batch.gate is not None:
        return batch.index, batch.gate.round, batch.gate.pending
    return None


def culprit(chain: Sequence[ChainLink], prefixes: dict[str, GateCheck]) -> int:
    """The index in a red candidate's chain of the first merge that turned it red: the first red
    prefix's last task, or the chain's last task when every shorter prefix passed."""
    return next((n - 1 for n in range(1, len(chain)) if not prefixes[prefix_label(n)].passed), len(chain) - 1)


def run(
    store: Store,
    work_dir: Path,
    run_id: str,
    batch: int,
    round_no: int,
    label: str,
    sha: str,
    worker: str = "",
    hidden: Sequence[Path] = (),
    lease_s: float = DEFAULT_TTL_S,
) -> GateCheck:
    """The gate job: check `sha` once per (batch, round, label), under a lease, as a task's job runs."""

    def stored() -> GateCheck | None:
        return store.gate_checks(run_id, batch, round_no, [label]).get(label)

    def work(lease: Lease) -> GateCheck:
        outcome = GateCheck(
            run_id=run_id, batch=batch, round=round_no, label=label, sha=sha, passed=False, worker=worker
        )
        start = time.monotonic()

        def stop() -> bool:
            return lease.lost.is_set() or store.cancel_requested(run_id)

        try:
            check(store.get(run_id, tasks=()), work_dir, sha, outcome, stop, hidden)
        except (OttoFarmError, OSError) as exc:  # it could not run: that says nothing about the code
            outcome.error = f"{type(exc).__name__}: {exc}"[-2000:]
        outcome.duration_s = round(time.monotonic() - start, 3)
        return outcome

    jid = job_id(run_id, batch, round_no, label)
    return run_once(store.redis, run_id, jid, lease_s, stored, work, store.add_gate_check)


def check(
    record: RunRecord, work_dir: Path, sha: str, outcome: GateCheck, stop: shell.Stop, hidden: Sequence[Path]
) -> None:
    """Run setup and the gate command on commit `sha`, and again up to `gate.retries` times while red."""
    ts = record.taskset
    cache = gitops.RepoCache(work_dir, record.repo)
    if not cache.has_commit(sha):
        cache.fetch([record.base if outcome.batch < 0 else candidate_branch(record.run_id)])
        if not cache.has_commit(sha):
            raise OttoFarmError(f"commit {sha} is not on the remote")
    deadline = time.monotonic() + ts.gate.timeout_s
    env = shell.safe_env({"OTTO_FARM_TASKSET_DIR": record.taskset_dir})
    with cache.slot(sha) as wt:
        walls = taskrun.job_walls(cache, wt, work_dir, hidden, record.taskset_dir)
        box = sandbox.get_sandbox(ts.sandbox, walls, lock_fds=[cache.slot_locks[wt]])
        gitops.reset(wt, f"otto-farm/{record.run_id}/gate", sha)
        commands = [ts.setup] if ts.setup else []
        for n in range(ts.gate.retries + 1):
            res = None
            for command in [*commands, ts.gate_command]:
                res = box.run(Command(command, deadline - time.monotonic(), env, stop=stop))
                if res.exit_code != 0 or res.timed_out:
                    break
            assert res is not None
            if res.stopped:
                raise OttoFarmError("stopped: the run was cancelled or the job taken over")
            if res.exit_code == 0 and not res.timed_out:
                outcome.passed, outcome.flaky = True, n > 0
                return
            outcome.exit_code, outcome.output = res.exit_code, verify.excerpt(res.output)
            commands = []  # setup once: a retry runs the gate command again, on the same tree
