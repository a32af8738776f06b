"""The `command` agent: any program that edits the worktree, given the prompt on stdin and in a file.

With `agent.preset`, the command line, the secrets passed on and the reading of stdout come from a named
preset (agents/presets.py) for a coding CLI such as Claude Code, Codex or Aider.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from otto_farm import shell
from otto_farm.agents import presets
from otto_farm.agents.base import AgentOutcome, AgentRequest
from otto_farm.agents.presets import ParsedOutput, Preset
from otto_farm.models import Usage
from otto_farm.sandbox import Command

OUTPUT_CHARS = 20_000
UNREACHABLE_LINES = 2  # a CLI's "cannot reach the API" lines before its attempt ends: one may be a blip
# bash's exit codes for a command it could not start: another attempt would meet the same wall.
CANNOT_RUN = {127: "not found", 126: "not executable"}
# A CLI's report (one JSON object, or the end of an event stream) must be read whole, not from a tail.
PARSED_OUTPUT_CHARS = 5_000_000
PROMPTS_PREFIX = "otto-farm-prompts-"  # + the pid of the process whose jobs' prompt files it holds
_PROMPT_ROOTS: dict[int, Path] = {}  # by pid: a forked pool process makes its own
_PROMPT_LOCK = threading.Lock()


class CommandAgent:
    def run(self, request: AgentRequest) -> AgentOutcome:
        preset: Preset | None = None
        if request.config.preset:
            try:
                preset = presets.get_preset(request.config.preset)
            except KeyError:
                return _failed(f"unknown agent preset {request.config.preset!r}")
        command = request.config.command or (preset.command if preset else None)
        if not command:
            return _failed("agent.command is not set")
        parses = preset is not None and preset.output in presets.PARSERS
        watch = _Unreachable(preset.unreachable, request.tee) if preset and preset.unreachable else None
        with tempfile.TemporaryDirectory(prefix="otto-farm-prompt-", dir=prompt_root()) as tmp:
            prompt_file = Path(tmp) / "prompt.md"
            prompt_file.write_text(request.prompt)
            env = {
                **request.env,
                **(preset.passthrough_env() if preset else {}),
                "OTTO_FARM_PROMPT_FILE": str(prompt_file),
                "OTTO_FARM_RUN_ID": request.run_id,
                "OTTO_FARM_TASK_KEY": request.task_key,
                "OTTO_FARM_ATTEMPT": str(request.attempt),
            }
            if request.config.model:
                env["OTTO_FARM_MODEL"] = request.config.model
            res = request.sandbox.run(
                Command(
                    command,
                    request.timeout_s,
                    env,
                    stdin=request.prompt,
                    split_stderr=True,
                    max_output_chars=PARSED_OUTPUT_CHARS if parses else OUTPUT_CHARS,
                    stop=watch.stop(request.should_stop) if watch else request.should_stop,
                    readable=[Path(tmp)],
                    tee=watch.feed if watch else request.tee,
                    idle_timeout_s=request.config.idle_timeout_s,
                )
            )
        parsed = presets.parse_output(preset.output, res.output) if preset else None
        outcome = _outcome(res, parsed, request.timeout_s)
        if watch is not None and watch.seen is not None:  # stopped here, not cancelled
            error = f"agent CLI cannot reach its API: {watch.seen}"
            outcome = replace(outcome, ok=False, stop_reason="error", infrastructure=True, error=error)
        if request.meter is not None:  # the CLI's cost comes as it exits: its attempt counts as one call
            request.meter.spend(outcome.usage)
        return outcome


class _Unreachable:
    """Watches a CLI's output, as it comes, for the line its preset says it prints while its API cannot
    be reached; after UNREACHABLE_LINES of them, `seen` holds the last and the command is stopped."""

    def __init__(self, pattern: str, tee: shell.Tee | None) -> None:
        self.pattern, self.tee = re.compile(pattern), tee
        self.count, self.partial = 0, ""
        self.seen: str | None = None

    def feed(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if self.pattern.search(line):
                self.count += 1
                if self.count >= UNREACHABLE_LINES:
                    self.seen = shell.tail(line.strip(), 300)
        if self.tee is not None:
            self.tee(text)

    def stop(self, cancelled: shell.Stop | None) -> shell.Stop:
        return lambda: self.seen is not None or (cancelled is not None and cancelled())


def prompt_root() -> Path:
    """This process's directory for its jobs' prompt files, made on its first job.

    A job's own directory goes when the job ends, but not when its process is killed (a pool process
    SIGKILLed at the hard time limit or with its worker), and a prompt may hold what it was told. So a
    process's first job removes what dead processes left: their directories, by the pid in the name
    (ours too: a dead process with our pid left it). Not in the worktree slot: that is committed, and
    the slot's reset (`git clean`) touches nothing beside it.
    """
    pid = os.getpid()
    with _PROMPT_LOCK:
        if (root := _PROMPT_ROOTS.get(pid)) is None:
            for path in Path(tempfile.gettempdir()).glob(f"{PROMPTS_PREFIX}*"):
                owner = path.name.removeprefix(PROMPTS_PREFIX).partition("-")[0]
                if owner.isdigit() and (int(owner) == pid or not _alive(int(owner))):
                    shutil.rmtree(path, ignore_errors=True)  # another user's stays: not ours to remove
            # mkdtemp: a name nobody else on a shared /tmp can have made first, readable by us alone.
            root = _PROMPT_ROOTS[pid] = Path(tempfile.mkdtemp(prefix=f"{PROMPTS_PREFIX}{pid}-"))
        return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _failed(error: str) -> AgentOutcome:
    """A configuration the agent cannot be started with."""
    return AgentOutcome(ok=False, stop_reason="error", error=error, cannot_run=True)


def _outcome(res: shell.ShellResult, parsed: ParsedOutput | None, timeout_s: float) -> AgentOutcome:
    """The outcome of one run: the exit code decides first, then what the CLI reported about itself."""
    lines = res.output.strip().splitlines()
    done = AgentOutcome(
        ok=True,
        final_message=parsed.final_message if parsed else (lines[-1] if lines else ""),
        stop_reason=parsed.stop_reason if parsed else "exited",
        exit_code=res.exit_code,
        output=shell.tail(res.output, OUTPUT_CHARS)
        + (f"\n[stderr]\n{shell.tail(res.stderr, OUTPUT_CHARS)}" if res.stderr else ""),
        usage=parsed.usage if parsed else Usage(),  # a failed run's tokens were spent all the same
        infrastructure=parsed is not None and parsed.infrastructure,  # the CLI met an API error
    )
    if res.stopped:
        return replace(done, ok=False, stop_reason="cancelled", error="run cancelled")
    if res.timed_out:
        return replace(
            done, ok=False, stop_reason="timeout", error=f"agent command timed out after {timeout_s:.0f}s"
        )
    if res.stalled:  # hung (a CLI waiting on a dead connection, a prompt): not the agent's failure
        return replace(done, ok=False, stop_reason="stalled", error=f"agent command stalled: {lines[-1]}")
    if res.overflowed:  # a runaway printer, not an agent at work: another attempt would do the same
        return replace(
            done, ok=False, stop_reason="error", error="agent command killed: its output passed the cap"
        )
    if res.exit_code in CANNOT_RUN:
        return replace(
            done,
            ok=False,
            stop_reason="error",
            cannot_run=True,
            error=f"agent command could not run (exit {res.exit_code}, {CANNOT_RUN[res.exit_code]}): "
            + shell.tail(res.stderr.strip() or res.output.strip(), 2000),
        )
    if res.exit_code != 0:
        detail = res.stderr.strip() or (parsed.error or "" if parsed else "")
        return replace(
            done,
            ok=False,
            stop_reason=parsed.stop_reason if parsed and not parsed.ok else "error",
            error=f"agent command exited {res.exit_code}: {shell.tail(detail, 2000)}",
        )
    if parsed and not parsed.ok:
        return replace(
            done, ok=False, error=f"agent reported a failure: {shell.tail(parsed.error or '', 2000)}"
        )
    return done
