"""The agent protocol: every coding agent takes an AgentRequest and returns an AgentOutcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from otto_farm import shell
from otto_farm.meter import Meter
from otto_farm.models import AgentConfig, Usage
from otto_farm.sandbox import Sandbox


@dataclass(frozen=True)
class AgentRequest:
    worktree: Path
    prompt: str  # the full prompt, the previous failure included
    config: AgentConfig
    env: dict[str, str]  # already scrubbed of secrets
    sandbox: Sandbox  # where its commands run (the `anthropic` agent's bash calls too)
    timeout_s: float
    run_id: str
    task_key: str
    attempt: int
    # The previous attempt's failure alone: an agent that keeps its conversation across attempts of one
    # job (one agent object serves them all) adds just this, so it reads its own error first-hand.
    previous_failure: str | None = None
    should_stop: Callable[[], bool] | None = None  # true once the run is cancelled: stop now
    tee: shell.Tee | None = None  # handed what the agent prints as it prints it: the task's live output
    meter: Meter | None = None  # the run's API calls: the fleet's rate limit and budget (meter.py)


@dataclass
class AgentOutcome:
    ok: bool
    final_message: str = ""
    stop_reason: str = "end_turn"  # end_turn | exited (a command's) | error | timeout | max_turns | ...
    exit_code: int | None = None
    output: str = ""  # what the agent printed, capped
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    transcript: list[dict[str, Any]] = field(default_factory=list)  # messages and tool calls, capped
    infrastructure: bool = False  # the failure was the API's, not the code's: no point in another attempt
    cannot_run: bool = False  # the agent could not be started at all: no attempt or run will do better
    model: str | None = None  # the model that did the work, where the agent knows it


class Agent(Protocol):
    def run(self, request: AgentRequest) -> AgentOutcome: ...
