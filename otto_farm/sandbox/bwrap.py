"""The `bwrap` sandbox: each command in bubblewrap's namespaces (Debian's `bubblewrap`, no daemon).

Its own PID, IPC and UTS namespaces (and network, with `network: false`); the worktree read-write, the
repository cache read-only, the rest of the file system read-only; a private /tmp, /run and $HOME; the
farm's home, work dir, config file and the worker's $HOME hidden; /proc of its own namespace only.
`--die-with-parent` and the PID namespace end every process it started with it, detached or not.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from otto_farm import shell
from otto_farm.sandbox.base import Command, Walls, run_wrapped

HOME = "/tmp/home"  # a private home in the sandbox's own /tmp
RESOLVER = "/run/systemd/resolve"  # where /etc/resolv.conf may point: DNS stays with /run hidden
NAMESPACES = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "otto-farm-sandbox"]


@functools.cache
def unavailable() -> str | None:
    """Why bubblewrap cannot make its namespaces on this machine, or None when it can (asked once)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [exe, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", *NAMESPACES, "--", "true"]
    try:
        proc = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap did not run: {exc}"
    return None if proc.returncode == 0 else f"bwrap cannot make namespaces here: {proc.stderr.strip()[:300]}"


def version() -> str:
    proc = subprocess.run(["bwrap", "--version"], capture_output=True, text=True)
    return proc.stdout.strip() or "bwrap"


@dataclass
class Bwrap:
    walls: Walls
    network: bool = True
    limits: Sequence[str] = ()  # run inside, before bash: e.g. prlimit
    kind: str = "bwrap"
    contained: bool = True

    def run(self, cmd: Command) -> shell.ShellResult:
        return run_wrapped(cmd, self.walls.worktree, self.argv(cmd.readable))

    def argv(self, readable: Sequence[Path] = ()) -> list[str]:
        """bwrap's command line, up to the command; later mounts lie over earlier ones."""
        w = self.walls
        argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        argv += ["--tmpfs", "/tmp", "--tmpfs", "/run", "--ro-bind-try", RESOLVER, RESOLVER]  # no host sockets
        argv += [*NAMESPACES, "--die-with-parent", "--new-session"]
        if not self.network:
            argv.append("--unshare-net")
        # Shown read-only: the task set's and prompt's directories, and the interpreter whose bin dir
        # leads PATH (pytest, python), even where they lie in /tmp or inside a hidden path; a hidden
        # path inside one of them stays hidden.
        shown = [*w.readable, *readable, Path(sys.prefix), Path(sys.base_prefix)]
        argv += _show(shown)
        argv += _hide(w.hidden)
        for path in shown:
            if any(path.is_relative_to(h) for h in w.hidden):
                argv += _show([path]) + _hide([h for h in w.hidden if h.is_relative_to(path)])
        argv += ["--ro-bind", str(w.cache), str(w.cache), "--bind", str(w.worktree), str(w.worktree)]
        argv += ["--dir", HOME, "--setenv", "HOME", HOME, "--setenv", "TMPDIR", "/tmp"]
        return [*argv, "--chdir", str(w.worktree), "--", *self.limits]


def _show(paths: Sequence[Path]) -> list[str]:
    return [arg for p in paths for arg in ("--ro-bind-try", str(p), str(p))]


def _hide(paths: Sequence[Path]) -> list[str]:
    """An empty tmpfs over a hidden directory, /dev/null over a hidden file."""
    argv: list[str] = []
    for path in paths:
        if path.is_dir():
            argv += ["--tmpfs", str(path)]
        elif path.exists():
            argv += ["--ro-bind", "/dev/null", str(path)]
    return argv
