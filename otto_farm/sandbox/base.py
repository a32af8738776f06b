"""The sandbox protocol: everything the farm runs for a task (setup, the agent, each of its tool calls,
verify) goes through one, bound to the task's worktree for the length of its job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from otto_farm import shell
from otto_farm.errors import OttoFarmError


class SandboxUnavailable(OttoFarmError):
    """The task set asks for a sandbox this worker cannot make."""


@dataclass(frozen=True)
class Walls:
    """What a job's commands may see: their worktree (read-write), the repository cache behind it
    (read-only, so `git status`/`diff`/`log` work), and what must stay out of sight."""

    worktree: Path
    cache: Path  # the bare cache.git the worktree's `.git` file points into
    hidden: Sequence[Path] = field(default_factory=tuple)  # the farm's home, work dir, config file, $HOME
    readable: Sequence[Path] = field(default_factory=tuple)  # shown read-only: the task set's directory


@dataclass(frozen=True)
class Command:
    """One command for a sandbox to run through bash in the worktree."""

    script: str
    timeout_s: float
    env: dict[str, str]  # already scrubbed of secrets
    stdin: str | None = None
    split_stderr: bool = False
    max_output_chars: int = 200_000
    stop: shell.Stop | None = None
    readable: Sequence[Path] = ()  # shown to it read-only, e.g. the prompt file's directory
    tee: shell.Tee | None = None  # handed its output as it comes: the task's live log
    idle_timeout_s: float | None = None  # killed, `stalled`, after printing nothing for this long


class Sandbox(Protocol):
    kind: str  #: "bwrap", "none", …: recorded with each result and shown by `status`
    contained: bool  #: False for `none`: its commands run as the worker, seeing what it sees

    def run(self, cmd: Command) -> shell.ShellResult: ...


def run_wrapped(
    cmd: Command, cwd: Path, prefix: Sequence[str], pass_fds: Sequence[int] = ()
) -> shell.ShellResult:
    """Run `cmd` as `prefix + bash -c script`: how a sandbox that wraps a process (bwrap) or none runs."""
    return shell.run(
        cmd.script,
        cwd=cwd,
        timeout_s=cmd.timeout_s,
        env=cmd.env,
        stdin=cmd.stdin,
        split_stderr=cmd.split_stderr,
        max_output_chars=cmd.max_output_chars,
        stop=cmd.stop,
        prefix=prefix,
        pass_fds=pass_fds,
        tee=cmd.tee,
        idle_timeout_s=cmd.idle_timeout_s,
    )
