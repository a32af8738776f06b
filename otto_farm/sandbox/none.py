"""The `none` sandbox: the command in its own process group, as the worker, seeing what it sees.

Its only wall: the job's slot lock goes to every process it starts, so a process that outlives its
job (a detached child) keeps the slot from being handed out again while it lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from otto_farm import shell
from otto_farm.sandbox.base import Command, Walls, run_wrapped


@dataclass
class NoSandbox:
    walls: Walls
    prefix: Sequence[str] = ()  # e.g. a memory limit (prlimit)
    lock_fds: Sequence[int] = ()
    kind: str = "none"
    contained: bool = False

    def run(self, cmd: Command) -> shell.ShellResult:
        return run_wrapped(cmd, self.walls.worktree, self.prefix, self.lock_fds)
