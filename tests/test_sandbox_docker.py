"""The `docker` sandbox (otto_farm/sandbox/docker.py) against a real Docker daemon, with the image
`python:3.11-slim` (.ci/run builds a stand-in where no registry is reachable); skipped with the
reason where either is missing."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from otto_farm import shell, taskset
from otto_farm.errors import InputError
from otto_farm.gitops import git
from otto_farm.models import RunStatus, SandboxConfig
from otto_farm.sandbox import Command, SandboxUnavailable, Walls, get_sandbox, remove_containers
from otto_farm.sandbox.docker import Docker

from conftest import branch_files, make_slot, start_worker

pytestmark = pytest.mark.part("docker")

IMAGE = "python:3.11-slim"


@functools.cache
def why_no_docker() -> str | None:
    """As tests/test_compose.py's, without compose: a client, a daemon that answers, the image."""
    if not shutil.which("docker"):
        return "docker is not installed (Debian: docker.io)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"no Docker daemon answers: {info.stderr.strip()[-300:]}"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        return f"image {IMAGE} is missing (with no registry: bash ../shared/tools/docker-standins.sh)"
    return None


@pytest.fixture
def docker() -> None:
    if why := why_no_docker():
        pytest.skip(why)


def top(box: Docker) -> list[str]:
    """The commands running in the box's container."""
    ps = ["docker", "top", box.name, "-o", "pid,args"]  # docker top wants the pid
    out = subprocess.run(ps, capture_output=True, text=True, check=True).stdout
    return [line.split(None, 1)[1] for line in out.splitlines()[1:]]


IDLE = ["/sbin/docker-init -- sleep infinity", "sleep infinity"]


@pytest.fixture
def walls(docker: None, make_repo, tmp_path: Path) -> Iterator[Walls]:
    """A slot as the farm makes it (a worktree of a bare cache, in a work dir), a farm home and a
    worker home with secrets in them, and a task set directory to show."""
    work = tmp_path / "work"
    wt, cache = make_slot(make_repo, work)
    secrets = Path(tempfile.mkdtemp(prefix="otto-farm-test-", dir="/var/tmp"))
    (secrets / "home").mkdir()
    (secrets / "home" / ".netrc").write_text("password hunter22")
    (secrets / "sets").mkdir()
    (secrets / "sets" / "tasks.yaml").write_text("tasks: []")
    yield Walls(wt, cache, [work, secrets / "home"], [secrets / "sets"])
    remove_containers(work)
    shutil.rmtree(secrets)


def sh(box: Docker, script: str, timeout_s: float = 30, **env: str) -> str:
    res = box.run(Command(script, timeout_s, shell.safe_env(env)))
    return f"{res.output}[{res.exit_code}]"


def test_a_task_runs_in_its_slots_container_and_is_merged(
    docker, make_repo, write_taskset, run_taskset, worker
):
    repo = make_repo()
    record = run_taskset(
        write_taskset(
            {
                "repo": str(repo),
                "sandbox": {"kind": "docker", "image": IMAGE},
                # In the image: its python, not the worker's venv; the prompt file copied in.
                "agent": {
                    "command": 'python3 -c "import sys; print(sys.prefix)" > where.txt && '
                    'cp "$OTTO_FARM_PROMPT_FILE" prompt.md'
                },
                # Passes on the base too (a gate may check it first): only the image's python is in /usr.
                "verify": "python3 -c 'import sys; assert sys.prefix == \"/usr\"'",
                "tasks": [{"key": "where", "prompt": "say where python is"}],
            }
        )
    )
    try:
        assert record.status is RunStatus.passed, record.tasks["where"].last
        assert record.tasks["where"].last.sandbox == "docker"
        assert {"where.txt", "prompt.md"} <= branch_files(repo, record.integration_branch)
        assert git(["show", f"{record.integration_branch}:where.txt"], cwd=repo) == "/usr\n"
        assert "say where python is" in git(["show", f"{record.integration_branch}:prompt.md"], cwd=repo)
    finally:
        remove_containers(worker.work_dir)


def test_a_command_sees_the_worktree_not_the_worker(walls: Walls, monkeypatch) -> None:
    work, home = walls.hidden
    monkeypatch.setenv("OTTO_TEST_WORKERS_OWN", "worker-only")
    monkeypatch.setenv("HOME", str(home))
    (work / "slot-1").mkdir()
    box = Docker(walls, IMAGE).start()
    shown = walls.readable[0]
    assert sh(box, "echo hi > new.txt && cat new.txt") == "hi\n[0]"  # the worktree: writable, its owner's
    assert (walls.worktree / "new.txt").stat().st_uid == os.getuid()
    assert sh(box, "git status --short") == "?? new.txt\n[0]"  # git finds the cache through .git
    assert "Read-only" in sh(box, f"touch {walls.cache}/hooks/post-checkout")
    assert sh(box, f"cat {shown}/tasks.yaml") == "tasks: [][0]"  # the task set's directory: shown
    assert "Read-only" in sh(box, f"touch {shown}/x")
    assert "No such file" in sh(box, f"cat {home}/.netrc")  # what is not mounted is not there
    assert sh(box, f"ls {work}") == "cache.git\nslot-0\n[0]"  # nor the work dir's other slots
    env = sh(box, "env", OTTO_FARM_TASK_KEY="k", SOME_API_KEY="passed-on")
    assert "OTTO_FARM_TASK_KEY=k" in env and "SOME_API_KEY=passed-on" in env  # what the farm adds
    assert "OTTO_TEST_WORKERS_OWN" not in env and f"HOME={home}" not in env
    assert "PATH=/usr/local/sbin:/usr/local/bin:" in env  # the image's own
    assert "passed-on" not in " ".join(box._exec_args(Command("", 1, {"SOME_API_KEY": "passed-on"})))


def test_nothing_a_command_leaves_outlives_it(walls: Walls) -> None:
    """Detached processes die when their command ends; a process a killed job left (`docker exec -d`
    here) dies before the next job gets the slot; a timed-out command dies in the container too."""
    box = Docker(walls, IMAGE).start()
    assert sh(box, "setsid -f sleep 4242; (sleep 4243 &); echo left") == "left\n[0]"
    assert top(box) == IDLE
    subprocess.run(["docker", "exec", "-d", box.name, "sleep", "4244"], check=True)
    assert "sleep 4244" in top(box)
    Docker(walls, IMAGE).start()
    assert top(box) == IDLE
    res = box.run(Command("touch started; sleep 4245", 1, shell.safe_env()))
    assert res.timed_out and (walls.worktree / "started").exists()
    assert top(box) == IDLE


def test_without_network_only_loopback(walls: Walls) -> None:
    assert sh(Docker(walls, IMAGE, network=False).start(), "ls /sys/class/net") == "lo\n[0]"
    assert "eth0" in sh(Docker(walls, IMAGE).start(), "ls /sys/class/net")  # started afresh: new walls


def test_the_workers_containers_go_when_it_stops(docker, settings, tmp_path: Path) -> None:
    worker = start_worker(settings, "docker-stop", concurrency=1)
    try:
        wt, cache = worker.work_dir / "repos" / "r" / "slot-0", worker.work_dir / "repos" / "r" / "cache.git"
        wt.mkdir(parents=True)
        cache.mkdir()
        box = Docker(Walls(wt, cache), IMAGE).start()  # as a job of this worker's would
        assert top(box) == IDLE
    finally:
        worker.stop()
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name={box.name}"], capture_output=True, text=True
    )
    assert listed.stdout.strip() == ""


def test_a_worker_without_docker_says_why(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    config = SandboxConfig(kind="docker", image=IMAGE)
    with pytest.raises(SandboxUnavailable, match="sandbox docker: .*(Cannot connect|docker client)"):
        get_sandbox(config, Walls(tmp_path, tmp_path))


def test_the_image_belongs_to_kind_docker(write_taskset) -> None:
    with pytest.raises(ValidationError, match="kind docker needs an image"):
        SandboxConfig(kind="docker")
    with pytest.raises(ValidationError, match="image is for kind docker, not bwrap"):
        SandboxConfig(kind="bwrap", image=IMAGE)
    path = write_taskset({"sandbox": {"kind": "docker"}, "tasks": [{"key": "a", "prompt": "p"}]})
    with pytest.raises(InputError) as err:
        taskset.load(path)
    assert "\n" not in str(err.value) and "needs an image" in str(err.value)
