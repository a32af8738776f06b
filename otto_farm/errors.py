"""One exception root; boundaries (Celery jobs, CLI commands) turn these into results or exit codes."""

from __future__ import annotations


class OttoFarmError(Exception):
    """Root of every error otto-farm raises on purpose."""

    exit_code = 3


class InputError(OttoFarmError):
    """Bad user input: the message is one line naming the file and the field."""

    exit_code = 2

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source, self.field, self.problem = source, field, problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


class GitError(OttoFarmError):
    """A git command failed; carries the command and its output."""

    def __init__(self, args: list[str], output: str) -> None:
        self.args_run, self.output = args, output
        super().__init__(f"git {' '.join(args)} failed: {output.strip()[-500:]}")


class InfrastructureError(OttoFarmError):
    """Broker, store or worker trouble: not the user's input, not a task's code."""


class Cancelled(OttoFarmError):
    """The run was cancelled while this job ran: it stops where it is."""


class Busy(OttoFarmError):
    """Another process holds the run's transition lock; the sweep comes back later."""
