"""The `command` agent: any program that edits the worktree, given the prompt on stdin and in a file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from otto_farm import shell
from otto_farm.agents.base import AgentOutcome, AgentRequest

OUTPUT_CHARS = 20_000


class CommandAgent:
    def run(self, request: AgentRequest) -> AgentOutcome:
        if not request.config.command:
            return AgentOutcome(ok=False, stop_reason="error", error="agent.command is not set")
        with tempfile.TemporaryDirectory(prefix="otto-farm-prompt-") as tmp:
            prompt_file = Path(tmp) / "prompt.md"
            prompt_file.write_text(request.prompt)
            env = {
                **request.env,
                "OTTO_FARM_PROMPT_FILE": str(prompt_file),
                "OTTO_FARM_RUN_ID": request.run_id,
                "OTTO_FARM_TASK_KEY": request.task_key,
                "OTTO_FARM_ATTEMPT": str(request.attempt),
            }
            res = shell.run(
                request.config.command,
                cwd=request.worktree,
                timeout_s=request.timeout_s,
                env=env,
                stdin=request.prompt,
                split_stderr=True,
                max_output_chars=OUTPUT_CHARS,
            )
        output = res.output + (f"\n[stderr]\n{res.stderr}" if res.stderr else "")
        if res.timed_out:
            return AgentOutcome(
                ok=False,
                stop_reason="timeout",
                exit_code=res.exit_code,
                output=output,
                error=f"agent command timed out after {request.timeout_s:.0f}s",
            )
        if res.exit_code != 0:
            return AgentOutcome(
                ok=False,
                stop_reason="error",
                exit_code=res.exit_code,
                output=output,
                error=f"agent command exited {res.exit_code}: {shell.tail(res.stderr.strip(), 2000)}",
            )
        last = res.output.strip().splitlines()
        return AgentOutcome(ok=True, final_message=last[-1] if last else "", exit_code=0, output=output)
