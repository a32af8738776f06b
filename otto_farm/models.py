"""pydantic contracts for everything that crosses a process: task sets, results, decisions, run state."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

TaskKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Strict(BaseModel):
    """User-facing models reject unknown fields, so a typo is an error rather than a silent default."""

    model_config = ConfigDict(extra="forbid")


class AgentConfig(Strict):
    provider: str = "command"
    preset: str | None = None  # a named command preset (config/agent-presets.toml), for provider command
    command: str | None = None
    model: str | None = None
    max_turns: int = Field(50, ge=1)
    max_tokens: int = Field(8192, ge=1)  # per model response
    max_total_tokens: int | None = Field(None, ge=1)  # input + output over the job's attempts
    max_cost_usd: float | None = Field(None, gt=0)  # one task's job
    fallback_model: str | None = None  # the anthropic agent's, after repeated overloaded (529) answers
    # Silence that ends an attempt as `stalled`: a command that prints nothing, an API turn that hangs.
    idle_timeout_s: float = Field(600, gt=0)


class SandboxConfig(Strict):
    """Where a task's commands run (otto_farm/sandbox/): `auto` is bwrap where the worker has it."""

    kind: Literal["auto", "bwrap", "docker", "none"] = "auto"
    image: NonEmpty | None = None  # kind docker's, e.g. python:3.11-slim
    network: bool = True  # false: the sandbox's own network namespace, loopback only (bwrap, docker)
    # bwrap, none: each process's data segment (prlimit --data); docker: the container's (--memory)
    memory_mb: int | None = Field(None, ge=16)

    @model_validator(mode="after")
    def _network_needs_walls(self) -> SandboxConfig:
        if self.kind == "none" and not self.network:
            raise ValueError("network: false needs a sandbox (kind bwrap, docker or auto)")
        return self

    @model_validator(mode="after")
    def _image_is_dockers(self) -> SandboxConfig:
        if self.kind == "docker" and self.image is None:
            raise ValueError("kind docker needs an image, e.g. image: python:3.11-slim")
        if self.kind != "docker" and self.image is not None:
            raise ValueError(f"image is for kind docker, not {self.kind}")
        return self


class GateConfig(Strict):
    """The integration gate (gate.py): the merged result of every batch must pass before the
    integration branch moves to it, and the base before any agent runs."""

    enabled: bool = True
    verify: str | None = None  # null: the task set's verify
    timeout_s: float = Field(1800, gt=0, le=6 * 3600)
    retries: int = Field(1, ge=0, le=5)  # runs again after a red, to tell a flaky gate from a break


class PilotConfig(Strict):
    enabled: bool = True
    model: str | None = None
    max_context_chars: int = Field(60000, ge=1000)
    timeout_s: float = Field(120, gt=0)


class Limits(Strict):
    """An API key's limits per minute, shared by every worker (limiter.py); None: not limited."""

    requests_per_minute: int | None = Field(None, gt=0)
    input_tokens_per_minute: int | None = Field(None, gt=0)
    output_tokens_per_minute: int | None = Field(None, gt=0)


class BudgetConfig(Strict):
    max_cost_usd: float | None = Field(None, gt=0)


class TaskSpec(Strict):
    key: TaskKey
    prompt: NonEmpty
    depends_on: list[str] = Field(default_factory=list)
    verify: str | None = None
    agent: AgentConfig | None = None
    sandbox: SandboxConfig | None = None


class TaskSet(Strict):
    name: str | None = None
    repo: str = "."
    base: str | None = None
    integration_branch: str | None = None
    setup: str | None = None
    verify: str = "pytest -q"
    max_attempts: int = Field(2, ge=1, le=20)
    max_task_runs: int = Field(2, ge=1, le=20)
    max_batch_size: int = Field(8, ge=1)
    # Bounded so the broker's visibility timeout (settings.py) always outlasts a job.
    timeout_s: float = Field(1800, gt=0, le=6 * 3600)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    pilot: PilotConfig = Field(default_factory=PilotConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    tasks: list[TaskSpec] = Field(min_length=1)

    def dependencies(self) -> dict[str, list[str]]:
        """Task key → the keys it depends on, in file order."""
        return {t.key: t.depends_on for t in self.tasks}

    def task(self, key: str) -> TaskSpec:
        return next(t for t in self.tasks if t.key == key)

    def agent_for(self, key: str) -> AgentConfig:
        """The task's agent: the set's agent with the task's own fields laid over it."""
        override = self.task(key).agent
        if override is None:
            return self.agent
        return self.agent.model_copy(update=override.model_dump(exclude_unset=True))

    def sandbox_for(self, key: str) -> SandboxConfig:
        """The task's sandbox: the set's with the task's own fields laid over it."""
        override = self.task(key).sandbox
        if override is None:
            return self.sandbox
        return SandboxConfig.model_validate(
            {**self.sandbox.model_dump(), **override.model_dump(exclude_unset=True)}
        )

    def verify_for(self, key: str) -> str:
        return self.task(key).verify or self.verify

    @property
    def gate_command(self) -> str:
        return self.gate.verify or self.verify


def with_tasks(ts: TaskSet, specs: list[TaskSpec]) -> TaskSet:
    """The task set with `specs` after its own tasks; a shallow copy, so a cached set stays as it is."""
    return ts.model_copy(update={"tasks": [*ts.tasks, *specs]}) if specs else ts


class TaskStatus(StrEnum):
    pending = "pending"  #: waiting for a batch
    running = "running"  #: its job is on a worker
    passed = "passed"  #: verify passed (and, once merged, its commit is on the integration branch)
    failed = "failed"  #: verify failed on every attempt
    error = "error"  #: the agent, setup or git broke
    timeout = "timeout"  #: the job ran out of time
    merge_conflict = "merge_conflict"  #: passed, but its branch did not merge cleanly
    skipped = "skipped"  #: will not run (a dependency failed for good)


FAILED_STATUSES = frozenset(
    {TaskStatus.failed, TaskStatus.error, TaskStatus.timeout, TaskStatus.merge_conflict}
)


class RunStatus(StrEnum):
    running = "running"  #: batches still to run
    passed = "passed"  #: every task passed and merged
    failed = "failed"  #: finished, some tasks did not pass
    error = "error"  #: stopped by an infrastructure failure
    budget_exceeded = "budget_exceeded"  #: stopped dispatching once budget.max_cost_usd was spent
    cancelled = "cancelled"  #: stopped by `otto-farm cancel`
    base_red = "base_red"  #: the base commit failed the gate: no agent ran


class Usage(BaseModel):
    # Counts come from APIs and CLIs' output: never negative, so a run's cost only grows.
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    cache_read_tokens: int = Field(0, ge=0)
    cache_write_tokens: int = Field(0, ge=0)
    cost_usd: float = Field(0.0, ge=0, allow_inf_nan=False)
    # The Messages API's calls (meter.py): how many, and what waiting for the fleet's limits cost.
    api_calls: int = Field(0, ge=0)
    limit_wait_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    rate_limited: int = Field(0, ge=0)  # 429 answers, each waited out
    overloaded: int = Field(0, ge=0)  # 529 answers, each waited out

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields})


# A run that ended with one of these cannot do better run again: the task is not retried.
NOT_RETRIED_CODES = frozenset({"agent_cannot_run"})


class Attempt(BaseModel):
    """One agent → verify round inside a job."""

    number: int
    agent_exit_code: int | None = None
    agent_output: str = ""
    verify_exit_code: int | None = None
    verify_output: str = ""
    error_code: str | None = None
    duration_s: float = 0.0
    stop_reason: str | None = None
    final_message: str = ""
    usage: Usage = Field(default_factory=Usage)
    model: str | None = None  # the model that did the work: the fallback after repeated overloads


class TaskResult(BaseModel):
    """What one run_task job returns; a failure is a status here, never an exception."""

    run_id: str
    task_key: str
    run_no: int
    batch: int
    status: TaskStatus
    error_code: str | None = None
    error: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    verify_tail: str = ""
    diff_stat: str = ""
    branch: str = ""
    base_sha: str = ""
    commit_sha: str | None = None
    duration_s: float = 0.0
    usage: Usage = Field(default_factory=Usage)
    worker: str = ""
    sandbox: str = ""  # the kind its commands ran in ("none": unsandboxed)


class TaskState(BaseModel):
    key: str
    status: TaskStatus = TaskStatus.pending
    batch: int | None = None
    runs: int = 0
    results: list[TaskResult] = Field(default_factory=list)
    guidance: str | None = None  # handed to the task's next run by the replan or the pilot
    context: list[str] = Field(default_factory=list)  # routed to this task by the pilot
    reason: str | None = None
    error_code: str | None = None  # its last run's, beside `reason`: some are not retried (NOT_RETRIED_CODES)
    merged_sha: str | None = None
    gate_output: str | None = None  # what the gate printed when this task's merge broke it
    # When its current run's job started, while it runs: filled by the store's reads, not kept in the record.
    started_at: datetime | None = None

    @property
    def last(self) -> TaskResult | None:
        return self.results[-1] if self.results else None

    def result_of(self, run_no: int) -> TaskResult | None:
        """The stored result of run `run_no`, if it is loaded (store.Store.fill_results)."""
        return next((r for r in self.results if r.run_no == run_no), None)


class Decision(BaseModel):
    """What happens after a batch: retries with guidance, skips with reasons, and the batches to come."""

    source: Literal["replan", "pilot"] = "replan"
    retry: dict[str, str] = Field(default_factory=dict)
    skip: dict[str, str] = Field(default_factory=dict)
    routed: dict[str, list[str]] = Field(default_factory=dict)  # task → context for its prompt alone
    learnings: list[str] = Field(default_factory=list)  # for every later task's prompt
    new_tasks: list[TaskSpec] = Field(default_factory=list)  # fix tasks the pilot adds to the run
    batches: list[list[str]] = Field(default_factory=list)
    later_batches: int = 0  # as kept in the record: how many batches followed the first (`kept`)

    def kept(self) -> Decision:
        """The decision as the run record keeps it: its first batch and a count of the rest. The rest
        is the run's plan; a copy in each batch's decision would grow with tasks × batches."""
        later = self.later_batches + max(len(self.batches) - 1, 0)
        return self.model_copy(update={"batches": self.batches[:1], "later_batches": later})


class PilotAnswer(BaseModel):
    """What the pilot job returns: the model's raw answer or why there is none."""

    batch: int
    model: str
    raw: str = ""
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    duration_s: float = 0.0
    superseded: bool = False  # another delivery of the pilot job holds its lease: apply nothing from this


class PilotRecord(PilotAnswer):
    """A pilot decision as kept in the run record: the answer, its validation outcome, what was applied."""

    outcome: Literal["applied", "default_batches", "fallback_replan"] = "fallback_replan"
    reason: str | None = None
    applied: Decision | None = None


class BatchStatus(StrEnum):
    running = "running"  #: its chord is out
    gating = "gating"  #: results merged into a candidate, the gate is checking it
    deciding = "deciding"  #: results merged, the pilot is deciding what comes next
    done = "done"  #: results stored, passing branches merged, next step decided


class GateCheck(BaseModel):
    """One gate job's answer: did commit `sha` pass the gate command (after `retries` more tries)?"""

    run_id: str
    batch: int  # -1: the base, before any batch
    round: int
    label: str  # "full" (the whole candidate), "p<n>" (its first n merges), "base"
    sha: str
    passed: bool
    flaky: bool = False  # red, then green when run again
    exit_code: int | None = None
    output: str = ""  # the failure-focused excerpt of the gate's output
    error: str | None = None  # the gate could not run at all (infrastructure): it decides nothing
    duration_s: float = 0.0
    worker: str = ""


class ChainLink(BaseModel):
    key: str
    sha: str  # the candidate after this task's merge commit


class GateState(BaseModel):
    """A batch's way through the gate: its merge chain, the checks of the round under way, and what
    earlier rounds found."""

    chain: list[ChainLink]
    round: int = 0
    search: bool = False  # this round checks the chain's prefixes for the first red one
    pending: dict[str, str] = Field(default_factory=dict)  # label → sha checked in this round
    checks: list[GateCheck] = Field(default_factory=list)  # every check of every round
    culprits: dict[str, str] = Field(default_factory=dict)  # task → the gate output its merge caused
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class BatchRecord(BaseModel):
    index: int
    tasks: list[str]
    base_ref: str
    base_sha: str
    status: BatchStatus = BatchStatus.running
    merged_sha: str | None = None
    decision: Decision | None = None
    pilot: PilotRecord | None = None
    gate: GateState | None = None
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class RunRecord(BaseModel):
    run_id: str
    name: str | None = None
    source: str
    taskset_dir: str
    taskset: TaskSet
    repo: str
    base: str
    base_sha: str
    integration_branch: str
    status: RunStatus = RunStatus.running
    tasks: dict[str, TaskState]
    # Tasks the pilot added. The stored task set is written once, so they live in the record's head, and
    # the store lays them over the task set it reads (`taskset` then holds them too: see `add_tasks`).
    added_tasks: list[TaskSpec] = Field(default_factory=list)
    batches: list[BatchRecord] = Field(default_factory=list)
    plan: list[list[str]] = Field(default_factory=list)  # batches still to dispatch
    learnings: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    integration_sha: str | None = None
    base_gate: GateCheck | None = None  # the base's check, with the gate on
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    # A window of the run (runparts.Window): only some of its task states and batches are read.
    _window: bool = PrivateAttr(default=False)

    def add_tasks(self, specs: list[TaskSpec]) -> None:
        """Add tasks to the run, each pending: to its head, its task set and its task states."""
        if specs:
            self.added_tasks = [*self.added_tasks, *specs]
            self.taskset = with_tasks(self.taskset, specs)
            self.tasks = {**self.tasks, **{t.key: TaskState(key=t.key) for t in specs}}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.tasks.values():
            out[state.status.value] = out.get(state.status.value, 0) + 1
        return out
