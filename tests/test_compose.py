"""docker-compose.yml run for real, where a Docker daemon answers (.ci/run starts one, with stand-in base
images where no registry is reachable); skipped with the reason elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PROJECT = f"otto-farm-test-{os.getpid()}"

pytestmark = [pytest.mark.part("docker"), pytest.mark.timeout(900)]

# Inside the compose worker's container: the sandbox `auto` gives, and what a command in it sees.
PROBE = """
import json, subprocess
from pathlib import Path
from otto_farm import shell
from otto_farm.sandbox import Command, Walls, describe
from otto_farm.sandbox.bwrap import Bwrap
wt, home = Path("/tmp/wt"), Path.home() / ".otto-farm"
subprocess.run(["git", "init", "-q", str(wt)], check=True)
home.mkdir()
(home / "redis.sock").write_text("the farm's")
box = Bwrap(Walls(wt, wt / ".git", [home, Path.home()]))
def sh(script):
    return box.run(Command(script, 30, shell.safe_env())).output.strip()
print(json.dumps({
    "sandbox": describe(),
    "uid": sh("id -u"),
    "home": sh(f"ls -A {home}"),
    "processes": int(sh("ls /proc | grep -c '^[0-9]'")),
    "wrote": sh("touch x && echo ok"),
}))
"""


def compose(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-p", PROJECT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def why_no_docker() -> str | None:
    if not (shutil.which("docker") and shutil.which("docker-compose")):
        return "docker or docker-compose is not installed (Debian: docker.io, docker-compose)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"no Docker daemon answers: {info.stderr.strip()[-300:]}"
    for image in ("python:3.11-slim", "redis:7"):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            return (
                f"base image {image} is missing (with no registry: bash ../shared/tools/docker-standins.sh)"
            )
    return None


@pytest.fixture(scope="module")
def built() -> Iterator[None]:
    if why := why_no_docker():
        pytest.skip(why)
    build = compose("build", "worker")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    yield
    compose("down", "-v", "--remove-orphans", timeout_s=120)


def test_the_compose_worker_runs_task_commands_in_bwrap(built: None) -> None:
    """The worker service as compose starts it (its user, its privileges) makes bubblewrap's namespaces,
    so `auto` is bwrap there: a command runs as the ordinary user, sees no farm home and only its
    own processes, and writes its worktree."""
    proc = compose("run", "--rm", "--no-deps", "-T", "worker", "python", "-c", PROBE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["sandbox"].startswith("sandbox: bwrap"), seen
    assert seen["uid"] == "1000" and "redis.sock" not in seen["home"] and seen["processes"] <= 5, seen
    assert seen["wrote"] == "ok", seen
