"""The `anthropic` agent: a tool-use loop on the Messages API with Claude's bash and text editor tools.

One agent object serves every attempt of a job and keeps its conversation, so a retry adds the
verify failure to the same messages and the model reads its own error first-hand.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic

from otto_farm import pricing, redact
from otto_farm.agents.base import AgentOutcome, AgentRequest
from otto_farm.agents.tools import TOOL_DEFINITIONS, ToolError, Workspace
from otto_farm.meter import CallFailed, Meter
from otto_farm.models import Usage

COMMAND_TIMEOUT_S = 120.0
API_TIMEOUT_S = 600.0
EPHEMERAL = {"type": "ephemeral"}
TRANSCRIPT_TEXT_CHARS = 2_000  # per message or tool output
TRANSCRIPT_ENTRIES = 400
SYSTEM = """You are a coding agent working in a git worktree at {root}, on one task of a larger plan.
Use the bash tool to explore, run commands and tests, and the str_replace_based_edit_tool to view and edit
files; paths are relative to the worktree (or absolute inside it). Do not commit: the harness commits your
changes and runs the verify command named in the task. When the task is done, stop calling tools and
answer with a short summary of what you changed and why."""


class AnthropicAgent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.total = Usage()  # over every attempt of the job, for max_total_tokens and max_cost_usd

    def run(self, request: AgentRequest) -> AgentOutcome:
        cfg = request.config
        model = cfg.model or pricing.default_model()
        deadline = time.monotonic() + request.timeout_s
        workspace = Workspace(
            root=request.worktree, env=request.env, sandbox=request.sandbox, stop=request.should_stop
        )
        if not self.messages:
            self.messages.append({"role": "user", "content": request.prompt})
        else:
            self.messages.append({"role": "user", "content": _retry_message(request.previous_failure)})
        outcome = AgentOutcome(ok=True)
        transcript = _Transcript()
        meter = request.meter or Meter()
        # The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from the worker's own environment; the
        # tools get the scrubbed request.env only. Its retries are off: the meter waits out 429s and 529s.
        system = [{"type": "text", "text": SYSTEM.format(root=request.worktree), "cache_control": EPHEMERAL}]
        with anthropic.Anthropic(max_retries=0) as client:

            def send(model: str, timeout_s: float) -> Any:
                return client.messages.with_raw_response.create(
                    model=model,
                    max_tokens=cfg.max_tokens,
                    system=system,  # type: ignore[arg-type]
                    tools=TOOL_DEFINITIONS,  # type: ignore[arg-type]
                    messages=self.messages,  # type: ignore[arg-type]
                    timeout=max(1.0, min(API_TIMEOUT_S, timeout_s)),
                )

            for _ in range(cfg.max_turns):
                if request.should_stop is not None and request.should_stop():
                    outcome.ok, outcome.stop_reason, outcome.error = False, "cancelled", "run cancelled"
                    break
                # Waiting for the API's limits is not the agent's time: the deadline moves by it.
                if (stop := _limit_reached(cfg, self.total, meter.later(deadline))) is not None:
                    outcome.stop_reason = stop
                    break
                try:
                    call = meter.call(
                        send,
                        model=model,
                        payload=self.messages,
                        max_tokens=cfg.max_tokens,
                        deadline=deadline,
                        idle_s=cfg.idle_timeout_s,
                        fallback=cfg.fallback_model,
                    )
                except CallFailed as exc:
                    outcome.usage, self.total = outcome.usage + exc.usage, self.total + exc.usage
                    outcome.ok, outcome.error = False, str(exc)
                    outcome.stop_reason = exc.kind if exc.kind != "api" else "error"
                    outcome.infrastructure = exc.kind == "api"
                    break
                response, model, usage = call.response, call.model, call.usage
                outcome.model = model
                outcome.usage, self.total = outcome.usage + usage, self.total + usage
                content = [block.model_dump(exclude_none=True) for block in response.content]
                self.messages.append({"role": "assistant", "content": content})
                transcript.assistant(content)
                if response.stop_reason != "tool_use":
                    outcome.stop_reason = response.stop_reason or "end_turn"
                    outcome.final_message = "".join(b["text"] for b in content if b["type"] == "text")
                    break
                results = [
                    _run_tool(workspace, block, meter.later(deadline), transcript)
                    for block in content
                    if block["type"] == "tool_use"
                ]
                self.messages.append({"role": "user", "content": results})
            else:
                outcome.stop_reason = "max_turns"
        if outcome.stop_reason == "timeout":
            outcome.ok, outcome.error = False, f"agent ran out of time ({request.timeout_s:.0f} s)"
        outcome.transcript = transcript.entries
        outcome.output = outcome.final_message or outcome.error or outcome.stop_reason
        return outcome


def _retry_message(failure: str | None) -> str:
    return (
        "## Previous attempt failed\n"
        + (failure or "The verify command did not pass.")
        + "\n\nFix the specific failures above. Do not regress items that were passing."
    )


def _limit_reached(cfg: Any, total: Usage, deadline: float) -> str | None:
    if time.monotonic() >= deadline:
        return "timeout"
    if cfg.max_total_tokens is not None and total.input_tokens + total.output_tokens >= cfg.max_total_tokens:
        return "max_total_tokens"
    if cfg.max_cost_usd is not None and total.cost_usd >= cfg.max_cost_usd:
        return "max_cost"
    return None


def _run_tool(
    workspace: Workspace, block: dict[str, Any], deadline: float, transcript: _Transcript
) -> dict[str, Any]:
    workspace.command_timeout_s = max(1.0, min(COMMAND_TIMEOUT_S, deadline - time.monotonic()))
    try:
        output, is_error = workspace.run(block["name"], block.get("input") or {}), False
    except ToolError as exc:  # back to the model, which can correct itself
        output, is_error = str(exc), True
    output = transcript.redactor.clean(output)  # a secret a tool printed must not reach the model either
    transcript.tool(block["name"], output, is_error)
    return {"type": "tool_result", "tool_use_id": block["id"], "content": output, "is_error": is_error}


class _Transcript:
    """What the model said and what the tools answered, capped, with the worker's secrets redacted."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.redactor = redact.redactor()

    def _clean(self, text: str) -> str:
        text = self.redactor.clean(text)  # before the cut, which could leave a secret's head behind
        return text if len(text) <= TRANSCRIPT_TEXT_CHARS else text[:TRANSCRIPT_TEXT_CHARS] + " [...cut]"

    def _add(self, entry: dict[str, Any]) -> None:
        if len(self.entries) < TRANSCRIPT_ENTRIES:
            self.entries.append(entry)

    def assistant(self, content: list[dict[str, Any]]) -> None:
        for block in content:
            if block["type"] == "text":
                self._add({"role": "assistant", "text": self._clean(block["text"])})
            elif block["type"] == "tool_use":
                self._add(
                    {
                        "role": "assistant",
                        "tool": block["name"],
                        "input": self._clean(json.dumps(block.get("input"), ensure_ascii=False)),
                    }
                )

    def tool(self, name: str, output: str, is_error: bool) -> None:
        self._add({"role": "tool", "tool": name, "output": self._clean(output), "is_error": is_error})
