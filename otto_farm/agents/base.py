"""The agent protocol: every coding agent takes an AgentRequest and returns an AgentOutcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from otto_farm.models import AgentConfig, Usage


@dataclass(frozen=True)
class AgentRequest:
    worktree: Path
    prompt: str
    config: AgentConfig
    env: dict[str, str]  # already scrubbed of secrets
    timeout_s: float
    run_id: str
    task_key: str
    attempt: int


@dataclass
class AgentOutcome:
    ok: bool
    final_message: str = ""
    stop_reason: str = "end_turn"  # end_turn | error | timeout | max_turns | ...
    exit_code: int | None = None
    output: str = ""  # what the agent printed, capped; kept as the attempt's transcript
    error: str | None = None
    usage: Usage = field(default_factory=Usage)


class Agent(Protocol):
    def run(self, request: AgentRequest) -> AgentOutcome: ...
