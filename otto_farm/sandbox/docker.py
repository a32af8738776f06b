"""The `docker` sandbox: a container per worktree slot, a `docker exec` per command.

The container, started from the task set's `image`, sees the worktree read-write and the repository
cache read-only at their own paths (so the worktree's `.git` file resolves), the task set's directory
read-only, and nothing else of the worker's: the image's own file system, PATH and HOME. It runs as
the worker's uid and gid, so what it writes in the worktree stays the worker's to reset. Its process
idles (`sleep infinity` under `--init`); each command is a `docker exec` that `shell.run` bounds,
times and stops like any other.

Killing a `docker exec` client leaves its process running in the container, so when a command ends
whatever it left there is ended by restarting the container (`docker restart -t 0`). The same check
runs when a job takes the slot, before its worktree is reset: a job killed mid-command leaves nothing
to the next. The worker removes its containers when it stops (jobs.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from otto_farm import shell
from otto_farm.sandbox.base import Command, SandboxUnavailable, Walls

logger = logging.getLogger(__name__)

SLOT = "otto-farm.slot"  # label: the worktree, which lies in the worker's work dir: found at its shutdown
SPEC = "otto-farm.spec"  # label: a hash of how it was started, to start it afresh when that changes
RUN_TIMEOUT_S = 600  # `docker run` may pull the image


def _docker(*args: str, input: bytes | None = None, timeout_s: float = 60) -> str:
    """A docker command's output; a missing client or daemon, or a failure, is SandboxUnavailable."""
    try:
        proc = subprocess.run(["docker", *args], input=input, capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailable(f"sandbox docker: the docker client did not run: {exc}") from None
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip()[-300:]
        raise SandboxUnavailable(f"sandbox docker: `docker {args[0]}` failed: {why}")
    return proc.stdout.decode(errors="replace")


@dataclass
class Docker:
    walls: Walls
    image: str
    network: bool = True
    memory_mb: int | None = None
    kind: str = "docker"
    contained: bool = True

    @property
    def name(self) -> str:
        return "otto-farm-" + hashlib.sha1(str(self.walls.worktree).encode()).hexdigest()[:16]

    def start(self) -> Docker:
        """Make the slot's container ready for a new job: started, and running nothing but its idle
        process (a killed job may have left its commands running in it)."""
        args = self._run_args()
        spec = hashlib.sha1(json.dumps([*args, self.image]).encode()).hexdigest()[:16]
        fmt = f'{{{{.State}}}} {{{{.Label "{SPEC}"}}}}'
        found = _docker("ps", "-a", "--filter", f"name=^/{self.name}$", "--format", fmt).split()
        if found == ["running", spec]:
            self._settle(force=False)
            return self
        if found:  # stopped, or started for another image, network or walls
            _docker("rm", "-f", self.name)
        run = ["run", "-d", "--name", self.name, "--label", f"{SPEC}={spec}", *args]
        _docker(*run, "--entrypoint", "sleep", self.image, "infinity", timeout_s=RUN_TIMEOUT_S)
        return self

    def run(self, cmd: Command) -> shell.ShellResult:
        copied = self._copy_in(cmd.readable)
        res: shell.ShellResult | None = None
        try:
            res = shell.run(
                cmd.script,
                cwd=self.walls.worktree,
                timeout_s=cmd.timeout_s,
                env=cmd.env,  # the docker client's: `-e NAME` takes the value from it, off its command line
                stdin=cmd.stdin,
                split_stderr=cmd.split_stderr,
                max_output_chars=cmd.max_output_chars,
                stop=cmd.stop,
                prefix=self._exec_args(cmd),
                tee=cmd.tee,
                idle_timeout_s=cmd.idle_timeout_s,
            )
            return res
        finally:
            # A killed `docker exec` client leaves its process running inside, and one killed early may
            # start it after any look: restarted without looking.
            self._settle(force=res is None or res.timed_out or res.stopped or res.overflowed)
            if copied:  # the container's file system outlives a restart
                _docker("exec", self.name, "rm", "-rf", *copied)

    def _run_args(self) -> list[str]:
        w = self.walls
        args = ["--init", "--label", f"{SLOT}={w.worktree}", "--user", f"{os.getuid()}:{os.getgid()}"]
        if os.getuid() != 0:  # the image has no home for the worker's uid (docker gives it /)
            args += ["--env", "HOME=/tmp"]
        if not self.network:
            args += ["--network", "none"]
        if self.memory_mb:
            args += ["--memory", f"{self.memory_mb}m", "--memory-swap", f"{self.memory_mb}m"]
        shown = [p for p in w.readable if p.exists() and p not in w.hidden]
        args += _bind(w.worktree) + _bind(w.cache, readonly=True)
        for path in shown:
            args += _bind(path, readonly=True)
        # A hidden path inside a shown one (the config file beside the task set) stays out of sight.
        for hidden in w.hidden:
            if any(hidden != p and hidden.is_relative_to(p) for p in shown):
                if hidden.is_dir():
                    args += ["--mount", f"type=tmpfs,dst={hidden}"]
                elif hidden.exists():
                    args += ["--mount", f"type=bind,src=/dev/null,dst={hidden},readonly"]
        return args

    def _exec_args(self, cmd: Command) -> list[str]:
        args = ["docker", "exec", "-w", str(self.walls.worktree), *(["-i"] if cmd.stdin is not None else [])]
        for name in _farm_env(cmd.env):
            args += ["-e", name]
        return [*args, self.name]

    def _copy_in(self, paths: Sequence[Path]) -> list[str]:
        """Per-command readable paths (the prompt's directory, new each time: no bind mount can be
        added to a running container) are copied in at their own paths, root's and read-only to any
        other uid; a copy, so nothing the command does reaches the worker's."""
        paths = [p for p in paths if p.exists() and not any(p.is_relative_to(r) for r in self.walls.readable)]
        if not paths:
            return []
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path in paths:
                tar.add(path, arcname=str(path.relative_to("/")), filter=_read_only)
        _docker("cp", "-", f"{self.name}:/", input=archive.getvalue())
        return [str(p) for p in paths]

    def _settle(self, force: bool) -> None:
        """Restart the container unless it runs docker-init and its idle process alone."""
        if not force:
            try:
                force = len(_docker("top", self.name, "-o", "pid").split()) - 1 != 2
            except SandboxUnavailable:  # stopped (its idle process OOM-killed?): restarted all the same
                force = True
        if force:
            _docker("restart", "-t", "0", self.name)


def _bind(path: Path, readonly: bool = False) -> list[str]:
    return ["--mount", f"type=bind,src={path},dst={path}" + (",readonly" if readonly else "")]


def _read_only(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode = (info.mode | 0o444 | (0o111 if info.isdir() else 0)) & 0o755
    return info


def _farm_env(env: dict[str, str]) -> list[str]:
    """The names the farm set for this command (its OTTO_FARM_* entries, a preset's secrets, which
    safe_env had dropped): not the worker's environment, PATH included; the image has its own."""
    return [
        name
        for name, value in env.items()
        if name != "PATH" and (os.environ.get(name) != value or shell.is_secret_name(name))
    ]


def remove_containers(work_dir: Path) -> None:
    """Remove the containers of a work dir's slots: a worker's, as it stops."""
    if shutil.which("docker") is None:
        return
    fmt = f'{{{{.ID}}}} {{{{.Label "{SLOT}"}}}}'
    try:
        listed = _docker("ps", "-a", "--filter", f"label={SLOT}", "--format", fmt).splitlines()
        pairs = (line.split(" ", 1) for line in listed)
        if ids := [cid for cid, slot in pairs if Path(slot).is_relative_to(work_dir)]:
            _docker("rm", "-f", *ids)
    except SandboxUnavailable as exc:
        logger.warning("could not remove the sandbox containers of %s: %s", work_dir, exc)
