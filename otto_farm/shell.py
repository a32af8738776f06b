"""Run a shell command in its own process group, with a deadline and a scrubbed environment."""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Never handed to agents or verify commands: they run code we did not write.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
SECRET_NAMES = frozenset(
    {"OTTO_FARM_BROKER_URL", "OTTO_FARM_RESULT_BACKEND", "OTTO_FARM_STORE_URL", "OTTO_FARM_FLOWER_BASIC_AUTH"}
)


STOP_POLL_S = 0.5
Stop = Callable[[], bool]
Tee = Callable[[str], None]  # handed what the command printed, as it prints it (livelog.py)
# A tee is handed output at most this often: a chatty command costs a few calls a second, not one a read.
LIVE_EVERY_S = 0.25
Ended = Literal["exited", "timed_out", "stopped", "overflowed", "stalled"]
# Past this much output in all, a command is killed: a chatty one must not fill the worker's memory.
OUTPUT_CAP_BYTES = 64 << 20
# Once the command has exited and its group is killed, its pipes are read this long at most: a process
# that left the group may hold them open forever.
DRAIN_S = 0.2
CHUNK = 1 << 16  # a Linux pipe's default capacity


@dataclass(frozen=True)
class ShellResult:
    exit_code: int
    output: str
    stderr: str
    timed_out: bool
    duration_s: float
    stopped: bool = False  # `stop` said so before the command ended
    overflowed: bool = False  # killed for writing more than its output cap
    stalled: bool = False  # killed for printing nothing for `idle_timeout_s`


def is_secret_name(name: str) -> bool:
    """Whether a variable of this name holds a secret: never handed to a command, redacted where seen."""
    return name in SECRET_NAMES or any(m in name.upper() for m in SECRET_MARKERS)


def safe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without secrets, with this interpreter's bin dir first on PATH."""
    env = {k: v for k, v in os.environ.items() if not is_secret_name(k)}
    # A worker started from a venv runs `python`/`pytest` from that venv, as its user would expect.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def tail(text: str, limit: int) -> str:
    """Keep the end of a text, where errors are."""
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} chars cut ...]\n" + text[-limit:]


def first_line(text: str | None, limit: int = 200) -> str:
    """A text's first non-empty line, cut to `limit`: an error's cause in one line."""
    line = next((x.strip() for x in (text or "").splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


class _Capture:
    """One stream's output as it comes: a quarter of `keep` bytes from its start (what ran), the rest
    from its end (where errors are); the middle is only counted."""

    def __init__(self, keep: int) -> None:
        self.head_max = max(keep, 0) // 4
        self.tail_max = max(keep, 0) - self.head_max
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        # Trimmed only once twice too long, so each byte is moved a bounded number of times.
        if len(self.tail) > 2 * self.tail_max:
            del self.tail[: len(self.tail) - self.tail_max]

    def text(self) -> str:
        end = self.tail[max(len(self.tail) - self.tail_max, 0) :]
        cut = self.total - len(self.head) - len(end)
        if not cut:
            return (self.head + end).decode(errors="replace")
        # A cut may fall inside a character: drop its pieces on both sides rather than show garbage.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        head = decoder.decode(bytes(self.head))
        skip = 0
        while skip < min(3, len(end)) and end[skip] & 0xC0 == 0x80:
            skip += 1
        cut += len(decoder.getstate()[0]) + skip
        return f"{head}\n[... {cut} bytes cut ...]\n" + end[skip:].decode(errors="replace")


class _Live:
    """What the command printed since the tee was last called: handed on at once after a quiet spell,
    else once LIVE_EVERY_S has passed since the last call."""

    def __init__(self, tee: Tee, fds: list[int]) -> None:
        self.tee = tee
        self.decoders = {fd: codecs.getincrementaldecoder("utf-8")(errors="replace") for fd in fds}
        self.parts: list[str] = []
        self.last = float("-inf")

    def add(self, fd: int, data: bytes) -> None:
        self.parts.append(self.decoders[fd].decode(data))
        self.due()

    def wait_s(self) -> float:
        """How long the output held back may wait for more."""
        return max(self.last + LIVE_EVERY_S - time.monotonic(), 0) if self.parts else float("inf")

    def due(self) -> None:
        if self.parts and time.monotonic() >= self.last + LIVE_EVERY_S:
            self.flush()

    def flush(self) -> None:
        text, self.parts, self.last = "".join(self.parts), [], time.monotonic()
        if text:
            self.tee(text)

    def close(self) -> None:
        self.parts.extend(d.decode(b"", final=True) for d in self.decoders.values())
        self.flush()


def run(
    command: str,
    cwd: Path,
    timeout_s: float,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    split_stderr: bool = False,
    max_output_chars: int = 200_000,
    stop: Stop | None = None,
    max_output_bytes: int = OUTPUT_CAP_BYTES,
    prefix: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
    tee: Tee | None = None,
    idle_timeout_s: float | None = None,
) -> ShellResult:
    """Run `[*prefix, "/bin/bash", "-c", command]` in a session of its own; on timeout, on `stop()`
    (asked twice a second), on writing more than `max_output_bytes`, on printing nothing for
    `idle_timeout_s` or on any exception, kill its whole process group. Once the command exits its group
    is killed too, so nothing it started outlives it.

    Its output and errors are read from pipes while it runs; at most `max_output_chars` bytes of each
    are kept, from its start and its end; `tee`, if given, is handed all of both as they come. Its input
    is a file, so a command that does not read it cannot block on it.
    """
    start = time.monotonic()
    with tempfile.TemporaryFile() as inp:
        if stdin is not None:
            inp.write(stdin.encode())
            inp.seek(0)
        proc = subprocess.Popen(
            [*prefix, "/bin/bash", "-c", command],
            cwd=cwd,
            env=env if env is not None else safe_env(),
            stdin=inp if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    out, err = _Capture(max_output_chars), _Capture(max_output_chars)
    pipes = {p.fileno(): c for p, c in ((proc.stdout, out), (proc.stderr, err)) if p is not None}
    live = _Live(tee, list(pipes)) if tee is not None else None
    try:
        ended = _pump(proc, pipes, start + max(timeout_s, 0.01), stop, max_output_bytes, live, idle_timeout_s)
    finally:
        _kill_group(proc)
        try:
            _drain(pipes, live)
            if live is not None:
                live.close()
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    output = out.text()
    if ended == "overflowed":
        mib, rest = divmod(max_output_bytes, 1 << 20)
        size = f"{max_output_bytes} bytes" if rest else f"{mib} MiB"
        output += ("\n" if output and not output.endswith("\n") else "") + f"[killed: output passed {size}]\n"
    elif ended == "stalled":
        output += ("\n" if output and not output.endswith("\n") else "") + (
            f"[killed: no output for {idle_timeout_s:g} s]\n"
        )
    return ShellResult(
        exit_code=proc.returncode if ended == "exited" else -signal.SIGKILL,
        output=output,
        stderr=err.text(),
        timed_out=ended == "timed_out",
        duration_s=time.monotonic() - start,
        stopped=ended == "stopped",
        overflowed=ended == "overflowed",
        stalled=ended == "stalled",
    )


def _pump(
    proc: subprocess.Popen[bytes],
    pipes: dict[int, _Capture],
    deadline: float,
    stop: Stop | None,
    cap: int,
    live: _Live | None,
    idle_s: float | None = None,
) -> Ended:
    """Read the command's pipes until it exits, times out, is stopped, overflows or stalls; which.

    The wait sleeps in the kernel, on the pipes and on a pidfd that becomes readable when the command
    exits. Popen.wait(timeout) wakes every 50 ms to look, which cost a job about 4 ms of CPU for each
    second its agent ran (bench/, benchmark 3).
    """
    exit_fd = _pidfd(proc)
    poller = select.poll()
    for fd in [*pipes, *([] if exit_fd is None else [exit_fd])]:
        poller.register(fd, select.POLLIN)
    next_stop = time.monotonic() + STOP_POLL_S
    quiet_until = time.monotonic() + idle_s if idle_s else float("inf")
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return "timed_out"
            if now >= quiet_until:
                return "stalled"
            if stop is not None and now >= next_stop:
                if stop():
                    return "stopped"
                next_stop = now + STOP_POLL_S
            wait_s = (min(deadline, next_stop) if stop is not None else deadline) - now
            if exit_fd is None:  # nothing tells us it exited: look now and then
                wait_s = min(wait_s, 0.05)
            if live is not None:
                wait_s = min(wait_s, live.wait_s())
            wait_s = min(wait_s, quiet_until - now)
            for fd, _ in poller.poll(max(wait_s, 0) * 1000):
                if fd == exit_fd:
                    return "exited"  # what the pipes still hold is drained after the group is killed
                if _read(fd, pipes, poller, live):
                    if sum(c.total for c in pipes.values()) > cap:
                        return "overflowed"
                    quiet_until = time.monotonic() + idle_s if idle_s else quiet_until
            if live is not None:
                live.due()
            if exit_fd is None and proc.poll() is not None:
                return "exited"
    finally:
        if exit_fd is not None:
            os.close(exit_fd)


def _read(fd: int, pipes: dict[int, _Capture], poller: select.poll, live: _Live | None) -> bool:
    """Read what one pipe has; False, and no longer polled, at its end."""
    data = os.read(fd, CHUNK)
    if data:
        pipes[fd].add(data)
        if live is not None:
            live.add(fd, data)
    else:
        poller.unregister(fd)
    return bool(data)


def _drain(pipes: dict[int, _Capture], live: _Live | None) -> None:
    """Read what the pipes still hold once the group is dead, for DRAIN_S at most."""
    deadline = time.monotonic() + DRAIN_S
    poller = select.poll()
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    open_fds = len(pipes)
    while open_fds and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            if not _read(fd, pipes, poller, live):
                open_fds -= 1


def _pidfd(proc: subprocess.Popen[bytes]) -> int | None:
    """A descriptor that becomes readable when `proc` exits (Linux), or None where there is none."""
    try:
        return os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # Background children of the command may outlive it; the group takes them too. The command is reaped
    # only after the kill, so its pid, the group's id, cannot have been reused by then.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
