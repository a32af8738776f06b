"""Run a shell command in its own process group, with a deadline and a scrubbed environment."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Never handed to agents or verify commands: they run code we did not write.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
SECRET_NAMES = frozenset(
    {"OTTO_FARM_BROKER_URL", "OTTO_FARM_RESULT_BACKEND", "OTTO_FARM_STORE_URL", "OTTO_FARM_FLOWER_BASIC_AUTH"}
)


STOP_POLL_S = 0.5
Stop = Callable[[], bool]


@dataclass(frozen=True)
class ShellResult:
    exit_code: int
    output: str
    stderr: str
    timed_out: bool
    duration_s: float
    stopped: bool = False  # `stop` said so before the command ended


def safe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without secrets, with this interpreter's bin dir first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SECRET_NAMES and not any(m in k.upper() for m in SECRET_MARKERS)
    }
    # A worker started from a venv runs `python`/`pytest` from that venv, as its user would expect.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def tail(text: str, limit: int) -> str:
    """Keep the end of a text, where errors are."""
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} chars cut ...]\n" + text[-limit:]


def run(
    command: str,
    cwd: Path,
    timeout_s: float,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    split_stderr: bool = False,
    max_output_chars: int = 200_000,
    stop: Stop | None = None,
) -> ShellResult:
    """Run `command` through bash; on timeout, on `stop()` (asked twice a second) or on any exception,
    kill its whole process group.

    Its input, output and errors are files, not pipes, so waiting for it is waiting for it to exit.
    """
    start = time.monotonic()
    with (
        tempfile.TemporaryFile() as inp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        if stdin is not None:
            inp.write(stdin.encode())
            inp.seek(0)
        proc = subprocess.Popen(
            ["/bin/bash", "-c", command],
            cwd=cwd,
            env=env if env is not None else safe_env(),
            stdin=inp if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err if split_stderr else subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = stopped = False
        deadline = start + max(timeout_s, 0.01)
        exit_fd = _pidfd(proc)
        try:
            while True:
                wait_s = deadline - time.monotonic()
                if _exited(proc, exit_fd, min(wait_s, STOP_POLL_S) if stop else wait_s):
                    break
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                if stop is not None and stop():
                    stopped = True
                    break
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
            _kill_group(proc)
        out.seek(0)
        err.seek(0)
        output = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return ShellResult(
        exit_code=proc.returncode if not (timed_out or stopped) else -signal.SIGKILL,
        output=tail(output, max_output_chars),
        stderr=tail(stderr, max_output_chars),
        timed_out=timed_out,
        duration_s=time.monotonic() - start,
        stopped=stopped,
    )


def _pidfd(proc: subprocess.Popen[bytes]) -> int | None:
    """A descriptor that becomes readable when `proc` exits (Linux), or None where there is none."""
    try:
        return os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return None


def _exited(proc: subprocess.Popen[bytes], exit_fd: int | None, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `proc` to exit; whether it did.

    On a pidfd the wait sleeps in the kernel. Popen.wait(timeout) wakes every 50 ms to look, which
    cost a job about 4 ms of CPU for each second its agent ran (bench/, benchmark 3).
    """
    if exit_fd is None:
        try:
            proc.wait(timeout=max(timeout_s, 0))
            return True
        except subprocess.TimeoutExpired:
            return False
    poller = select.poll()
    poller.register(exit_fd, select.POLLIN)
    if not poller.poll(max(timeout_s, 0) * 1000):
        return False
    proc.wait()
    return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # Background children of the command may outlive it; the group takes them too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
