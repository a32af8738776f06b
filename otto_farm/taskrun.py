"""One run of one task on a worker: worktree, setup, agent → commit → verify rounds, push, a TaskResult.

Plain functions, no Celery: jobs.py wraps them. A task's failure is a returned status, never raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from otto_farm import gitops, prompt, redact, sandbox, shell, verify
from otto_farm.agents import AgentOutcome, AgentRequest, get_agent
from otto_farm.budget import BudgetSpent
from otto_farm.errors import Cancelled, GitError
from otto_farm.lease import DEFAULT_TTL_S, Lease, run_once
from otto_farm.livelog import LiveLog
from otto_farm.meter import Meter
from otto_farm.models import Attempt, Limits, TaskResult, TaskStatus, Usage
from otto_farm.resources import data_dir
from otto_farm.runparts import JobView
from otto_farm.sandbox import Command, Sandbox, SandboxUnavailable, Walls
from otto_farm.store import Store

ATTEMPT_OUTPUT_CHARS = 8_000
Progress = Callable[[str, int], None]


def branch_name(run_id: str, key: str) -> str:
    return f"otto-farm/{run_id}/{key}"


@dataclass
class _Job:
    store: Store
    view: JobView
    key: str
    run_no: int
    deadline: float
    stop: shell.Stop
    live: LiveLog  # what its commands print, as they print it (`otto-farm logs -f`)
    meter: Meter  # its API calls: the fleet's limits and the run's budget
    attempts: list[Attempt] = field(default_factory=list)
    setup_files: list[str] = field(default_factory=list)  # what setup created: never committed
    usage: Usage = field(default_factory=Usage)

    def remaining_s(self) -> float:
        """What is left of its time: waiting for the API's limits does not count (Meter.later)."""
        return self.meter.later(self.deadline) - time.monotonic()


def run(
    store: Store,
    work_dir: Path,
    run_id: str,
    key: str,
    run_no: int,
    batch: int,
    worker: str = "",
    progress: Progress | None = None,
    timeout_errors: tuple[type[BaseException], ...] = (),
    lease_s: float = DEFAULT_TTL_S,
    hidden: Sequence[Path] = (),
    limits: Limits | None = None,
) -> TaskResult:
    """Run the task once and store its result.

    A redelivered job returns the stored result; one that meets another delivery still running (its
    lease held) waits for that one's result, or takes over if the lease lapses with its worker.
    `hidden`: paths of the farm's the task's commands must not see (its home, config file), beside
    the work dir and the worker's $HOME, which are always hidden. `limits`: the API key's, which every
    worker's calls share (limiter.py).
    """
    views: list[JobView] = []

    def stored() -> TaskResult | None:
        views[:] = [store.job_view(run_id, key, run_no, batch)]
        return views[0].state.result_of(run_no)

    def work(lease: Lease) -> TaskResult:
        return _run_once(
            store,
            work_dir,
            views[0],
            key,
            run_no,
            batch,
            worker,
            lease,
            progress,
            timeout_errors,
            hidden,
            limits or Limits(),
        )

    jid = job_id(run_id, batch, key, run_no)
    return run_once(store.redis, run_id, jid, lease_s, stored, work, store.add_result)


def job_id(run_id: str, batch: int, key: str, run_no: int) -> str:
    """A job's Celery task id and lease name: readable in Flower, known to `cancel` without asking."""
    return f"{run_id}.b{batch}.{key}.r{run_no}"


def _run_once(
    store: Store,
    work_dir: Path,
    view: JobView,
    key: str,
    run_no: int,
    batch: int,
    worker: str,
    lease: Lease,
    progress: Progress | None,
    timeout_errors: tuple[type[BaseException], ...],
    hidden: Sequence[Path],
    limits: Limits,
) -> TaskResult:
    run_id = view.run_id
    store.task_started(run_id, key, run_no, batch, worker)
    started = time.monotonic()
    job = _Job(
        store,
        view,
        key,
        run_no,
        started + view.taskset.timeout_s,
        lambda: lease.lost.is_set() or _cancelled(store, run_id),
        LiveLog(store, run_id, key, run_no),
        Meter.for_run(store.redis, run_id, view.taskset.budget.max_cost_usd, limits),
    )
    result = error_result(run_id, key, run_no, batch, worker, base_sha=view.batch.base_sha)
    try:
        if view.cancelled:
            raise Cancelled()
        _execute(job, work_dir, result, progress or (lambda phase, attempt: None), hidden)
    except Cancelled:
        result.status, result.error_code, result.error = TaskStatus.error, "cancelled", "run cancelled"
    except GitError as exc:
        result.status, result.error_code, result.error = TaskStatus.error, "git_error", str(exc)[-2000:]
    except SandboxUnavailable as exc:
        result.status, result.error_code, result.error = TaskStatus.error, "sandbox_unavailable", str(exc)
    except timeout_errors:
        result.status, result.error_code, result.error = (
            TaskStatus.timeout,
            "job_timeout",
            "job time limit reached",
        )
    except RedisError:
        raise  # the store is gone for now: a lost job, run again by the sweep (jobs.run_task)
    except Exception as exc:  # the job boundary: report, never raise, so the chord callback runs
        result.status, result.error_code = TaskStatus.error, "infrastructure"
        result.error = f"{type(exc).__name__}: {exc}"[-2000:]
    job.live.close()
    result.attempts, result.usage = job.attempts, job.usage
    result.duration_s = round(time.monotonic() - started, 3)
    return result


def _cancelled(store: Store, run_id: str) -> bool:
    try:
        return store.cancel_requested(run_id)
    except RedisError:  # a blip in the store does not stop a job's commands
        return False


def error_result(
    run_id: str, key: str, run_no: int, batch: int, worker: str, base_sha: str = "", **fields: Any
) -> TaskResult:
    """A result that says `error` until the job has done better."""
    return TaskResult(
        run_id=run_id,
        task_key=key,
        run_no=run_no,
        batch=batch,
        status=TaskStatus.error,
        branch=branch_name(run_id, key),
        base_sha=base_sha,
        worker=worker,
        **fields,
    )


def _execute(
    job: _Job, work_dir: Path, result: TaskResult, progress: Progress, hidden: Sequence[Path]
) -> None:
    view = job.view
    ts, base = view.taskset, view.batch
    cache = gitops.RepoCache(work_dir, view.repo)
    if not cache.has_commit(base.base_sha):  # a warm cache often has it: the batch's base is shared
        progress("fetch", 0)  # only when it happens: each report is a few Redis round trips
        cache.fetch([base.base_ref])
        if not cache.has_commit(base.base_sha):
            result.error_code, result.error = (
                "base_missing",
                f"base commit {base.base_sha} not on {base.base_ref}",
            )
            return
    env = shell.safe_env({"OTTO_FARM_TASKSET_DIR": view.taskset_dir})
    with cache.slot(base.base_sha) as wt:
        walls = job_walls(cache, wt, work_dir, hidden, view.taskset_dir)
        box = sandbox.get_sandbox(ts.sandbox_for(job.key), walls, lock_fds=[cache.slot_locks[wt]])
        result.sandbox = box.kind
        gitops.reset(wt, result.branch, base.base_sha)
        if ts.setup and not _setup(job, wt, box, env, result, progress):
            return
        _attempts(job, wt, box, env, result, progress)
        if (head := gitops.head(wt)) != base.base_sha:  # the agent may have committed on its own too
            result.commit_sha = head
            result.diff_stat = gitops.diff_stat(wt, base.base_sha)
            progress("push", len(job.attempts))
            gitops.push(wt, result.branch, view.run_id)


def job_walls(
    cache: gitops.RepoCache, wt: Path, work_dir: Path, hidden: Sequence[Path], taskset_dir: str
) -> Walls:
    """A job's sandbox walls in slot `wt`: the work dir, the worker's $HOME and `hidden` out of sight;
    shown read-only, the task set's directory (an agent may read files beside it) and the farm's own
    tasks/ (its scripted agent, which the demo and the scenarios run)."""
    shown = [Path(taskset_dir), data_dir("tasks", "scripted_agent.py")]
    return Walls(wt, cache.git_dir, [work_dir, Path.home(), *hidden], shown)


def _setup(
    job: _Job, wt: Path, box: Sandbox, env: dict[str, str], result: TaskResult, progress: Progress
) -> bool:
    progress("setup", 0)
    res = box.run(
        Command(
            job.view.taskset.setup or "", job.remaining_s(), env, stop=job.stop, tee=job.live.tee("setup")
        )
    )
    if res.stopped:
        raise Cancelled()
    if res.exit_code == 0:
        job.setup_files = gitops.untracked(wt)
        return True
    result.status = TaskStatus.timeout if res.timed_out else TaskStatus.error
    result.error_code = "setup_timeout" if res.timed_out else "setup_failed"
    result.error = f"setup exited {res.exit_code}"
    result.verify_tail = verify.excerpt(res.output)
    return False


# An agent's failure that ends the job: another attempt would meet the same wall.
FINAL_CODES = frozenset({"agent_timeout", "agent_api_error", "agent_cannot_run", "budget_spent"})


def failure_code(outcome: AgentOutcome) -> str:
    if outcome.stop_reason == "timeout":
        return "agent_timeout"
    if outcome.stop_reason == "budget":
        return "budget_spent"
    if outcome.stop_reason == "stalled":  # the API or the CLI went quiet: not the agent's failure
        return "agent_stalled"
    if outcome.infrastructure:
        return "agent_api_error"
    return "agent_cannot_run" if outcome.cannot_run else "agent_error"


def _attempts(
    job: _Job, wt: Path, box: Sandbox, env: dict[str, str], result: TaskResult, progress: Progress
) -> None:
    """Agent → commit → verify, up to max_attempts; each retry gets the previous failure first-hand."""
    view, key = job.view, job.key
    ts = view.taskset
    agent_cfg, verify_cmd = ts.agent_for(key), ts.verify_for(key)
    agent = get_agent(agent_cfg)
    meter = job.meter
    # A retried task's first attempt reads its previous run's failure first-hand, as later attempts do.
    failure = prompt.previous_run_failure(view.state)
    tree = gitops.layout(wt, view.batch.base_sha)
    for n in range(1, ts.max_attempts + 1):
        if job.remaining_s() <= 0:
            result.status, result.error_code, result.error = TaskStatus.timeout, "job_timeout", "no time left"
            return
        try:
            meter.check()
        except BudgetSpent as exc:  # the run's cap is spent on some worker: no call may follow
            result.status, result.error_code, result.error = TaskStatus.error, "budget_spent", str(exc)
            return
        progress("agent", n)
        meter.on_wait = lambda waiting, n=n: progress("waiting_for_limit" if waiting else "agent", n)
        attempt_start = time.monotonic()
        outcome = agent.run(
            AgentRequest(
                worktree=wt,
                prompt=prompt.build(ts, view.state, view.learnings, failure, layout=tree),
                config=agent_cfg,
                env=env,
                sandbox=box,
                timeout_s=job.remaining_s(),
                run_id=view.run_id,
                task_key=key,
                attempt=n,
                previous_failure=failure,
                should_stop=job.stop,
                tee=job.live.tee("agent", n),
                meter=meter,
            )
        )
        if outcome.stop_reason == "cancelled":
            raise Cancelled()
        attempt = Attempt(
            number=n,
            agent_exit_code=outcome.exit_code,
            agent_output=shell.tail(outcome.output, ATTEMPT_OUTPUT_CHARS),
            stop_reason=outcome.stop_reason,
            final_message=shell.tail(outcome.final_message, ATTEMPT_OUTPUT_CHARS),
            usage=outcome.usage,
            model=outcome.model,
        )
        if outcome.transcript:  # kept apart from the result: a log, with a time to live
            job.store.put_transcript(view.run_id, key, job.run_no, n, outcome.transcript)
        job.attempts.append(attempt)
        job.usage = job.usage + outcome.usage
        if not outcome.ok:
            timed_out = outcome.stop_reason == "timeout"
            code = attempt.error_code = failure_code(outcome)
            result.status = TaskStatus.timeout if timed_out else TaskStatus.error
            result.error_code, result.error = code, outcome.error
            failure = redact.redactor().clean(f"The agent run failed: {outcome.error}")
            attempt.duration_s = round(time.monotonic() - attempt_start, 3)
            if code in FINAL_CODES:
                return
            continue
        gitops.commit_all(wt, f"otto-farm: {key} (run {job.run_no}, attempt {n})", exclude=job.setup_files)
        progress("verify", n)
        res = box.run(
            Command(verify_cmd, job.remaining_s(), env, stop=job.stop, tee=job.live.tee("verify", n))
        )
        if res.stopped:
            raise Cancelled()
        attempt.verify_exit_code = res.exit_code
        attempt.verify_output = shell.tail(res.output, ATTEMPT_OUTPUT_CHARS)
        attempt.duration_s = round(time.monotonic() - attempt_start, 3)
        if res.exit_code == 0 and not res.timed_out:
            result.status, result.error_code, result.error = TaskStatus.passed, None, None
            result.verify_tail = shell.tail(res.output, 2000)
            return
        result.verify_tail = verify.excerpt(res.output)
        if res.overflowed:
            attempt.error_code = "verify_output_cap"
            result.status, result.error_code = TaskStatus.failed, "verify_output_cap"
            result.error = f"verify killed: its output passed the cap: `{verify_cmd}`"
            return
        if res.timed_out:
            attempt.error_code = "verify_timeout"
            result.status, result.error_code = TaskStatus.timeout, "verify_timeout"
            result.error = f"verify timed out: `{verify_cmd}`"
            return
        attempt.error_code = "verify_failed"
        result.status, result.error_code = TaskStatus.failed, "verify_failed"
        result.error = f"verify exited {res.exit_code}: `{verify_cmd}`"
        # Back to the agent (and its LLM): without any secret the worker knows, as everything stored.
        failure = redact.redactor().clean(
            f"The verify command `{verify_cmd}` failed (exit {res.exit_code}):\n{result.verify_tail}"
        )
