"""docker-compose.yml run for real, where a Docker daemon answers (.ci/run starts one, with stand-in base
images where no registry is reachable); skipped with the reason elsewhere.

The image is built with compose and the sandbox probed in the worker service; then the whole file runs
(`up -d --scale worker=3`, its own project name and host ports, `down -v` whatever happens): a run
submitted from this process spreads over the three worker containers, Flower wants its basic auth, the
workers' health check sees a stuck worker, and a restart keeps the runs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from conftest import free_port, report

ROOT = Path(__file__).parents[1]
PROJECT = f"otto-farm-test-{os.getpid()}"
WORKERS = 3
PASSWORD = secrets.token_hex(16)
FLOWER_AUTH = f"otto:{secrets.token_hex(8)}"
# Compose's environment: never this machine's farm settings; the password it refuses to start without.
COMPOSE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OTTO_FARM_", "ANTHROPIC_"))} | {
    "OTTO_FARM_REDIS_PASSWORD": PASSWORD,
    "OTTO_FARM_FLOWER_BASIC_AUTH": FLOWER_AUTH,
    "ANTHROPIC_API_KEY": "",
}

pytestmark = [pytest.mark.part("docker"), pytest.mark.timeout(900)]
# Building the image and running the whole file take minutes: only with --slow-parts (as .ci/run runs).
SLOW = pytest.mark.slow_part("docker compose, about 2 minutes")

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

# Inside a container: run its health check `n` times; the CPU time of what it started, per check.
CHECK_COST = """
import json, resource, subprocess, sys
test, n = json.loads(sys.argv[1]), int(sys.argv[2])
argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
codes = [subprocess.run(argv, capture_output=True).returncode for _ in range(n)]
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu_s = (ru.ru_utime + ru.ru_stime) / n
print(json.dumps({"cpu_s": cpu_s, "codes": codes}))
"""

# The Celery main process of a worker container: docker-init's child (the health check finds it so too).
STOP_CELERY = "kill -{} $(cat /proc/1/task/1/children)"


def compose(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-p", PROJECT, *args],
        cwd=ROOT,
        env=COMPOSE_ENV,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def docker(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)


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


def test_compose_refuses_to_run_without_a_redis_password(tmp_path: Path) -> None:
    """No Redis without a password: every compose command stops at the missing variable, saying how."""
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed (Debian: docker-compose)")
    empty = tmp_path / "empty.env"  # not the checkout's .env, which may hold the password
    empty.touch()
    env = {k: v for k, v in COMPOSE_ENV.items() if k != "OTTO_FARM_REDIS_PASSWORD"}
    argv = ["docker-compose", "--env-file", str(empty), "-p", PROJECT, "config", "-q"]
    refused = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set OTTO_FARM_REDIS_PASSWORD" in refused.stderr, refused
    ok = subprocess.run(argv, cwd=ROOT, env=COMPOSE_ENV, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


@pytest.fixture(scope="module")
def built() -> Iterator[None]:
    if why := why_no_docker():
        pytest.skip(why)
    build = compose("build", "worker")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    yield
    compose("down", "-v", "--remove-orphans", timeout_s=120)


@SLOW
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


# --- The whole file, up: `up -d --scale worker=3` and a run from this host. ---


@dataclass
class Farm:
    redis_port: int
    flower_port: int
    containers: dict[str, list[str]]  # service → its container ids
    gateway: str  # the host, as the containers reach it (the project network's gateway)
    host_env: dict[str, str]  # `otto-farm` on this host: the published Redis, with the password

    def hostname(self, container: str) -> str:
        return docker("inspect", "-f", "{{.Config.Hostname}}", container).stdout.strip()

    def logs(self) -> str:
        return compose("logs", "--no-color", "--tail", "40").stdout[-6000:]


def health() -> dict[str, str]:
    """Each container of the project (by name): its health, or its state where it has no health check."""
    ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    fmt = "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    lines = docker("inspect", "-f", fmt, *ids).stdout.split("\n") if ids else []
    return dict(line.strip("/").split() for line in lines if line.strip())


def wait_healthy(expected: int, timeout_s: float = 150) -> dict[str, str]:
    """Until `expected` containers are healthy (the first checks run one interval, 15 s, after start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = health()
        if len(states) == expected and set(states.values()) == {"healthy"}:
            return states
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not healthy after {timeout_s}s: {states}\n{compose('logs', '--tail', '30').stdout[-6000:]}"
            )
        time.sleep(2)


@pytest.fixture(scope="module")
def farm(built: None) -> Iterator[Farm]:
    redis_port = free_port()
    flower_port = next(p for p in iter(free_port, None) if p != redis_port)
    COMPOSE_ENV.update(OTTO_FARM_REDIS_PORT=str(redis_port), OTTO_FARM_FLOWER_PORT=str(flower_port))
    try:
        started = time.monotonic()
        up = compose("up", "-d", "--scale", f"worker={WORKERS}")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        wait_healthy(WORKERS + 4)
        report(
            "docker compose", f"up -d --scale worker={WORKERS}: healthy in {time.monotonic() - started:.0f}s"
        )
        containers = {
            service: compose("ps", "-q", service).stdout.split()
            for service in ("redis", "worker", "control", "pilot", "flower")
        }
        worker = containers["worker"][0]
        gateway = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}", worker)
        url = f"redis://:{PASSWORD}@127.0.0.1:{redis_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTTO_FARM_", "ANTHROPIC_"))}
        env.update(
            OTTO_FARM_BROKER_URL=f"{url}/0",
            OTTO_FARM_RESULT_BACKEND=f"{url}/1",
            OTTO_FARM_STORE_URL=f"{url}/1",
        )
        yield Farm(redis_port, flower_port, containers, gateway.stdout.strip(), env)
    finally:
        down = compose("down", "-v", "--remove-orphans", timeout_s=300)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]


@dataclass
class GitServer:
    url: str  # the same for the containers and for this host
    bare: Path


@pytest.fixture(scope="module")
def git_server(farm: Farm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """`git daemon` on this host, on the compose network's gateway: the workers clone from it and push
    their branches to it, and `submit` (this host) reads the base there, all by one URL."""
    root = tmp_path_factory.mktemp("git")
    work, srv = root / "work", root / "srv"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "README.md").write_text("demo\n")
    git_id = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(work), *git_id, "commit", "-q", "-m", "start"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(srv / "project.git")], check=True)
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack", f"--base-path={srv}"]
        + [f"--listen={farm.gateway}", f"--port={port}", str(srv)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"git://{farm.gateway}:{port}/project.git"
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["git", "ls-remote", url], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, f"git daemon does not answer on {url}"
            time.sleep(0.2)
        seen = docker("exec", farm.containers["worker"][0], "git", "ls-remote", url)
        assert seen.returncode == 0, f"a worker container cannot reach this host's {url}: {seen.stderr}"
        yield GitServer(url, srv / "project.git")
    finally:
        daemon.terminate()
        daemon.wait(10)


@dataclass
class Submitted:
    run_id: str
    output: str
    record: dict[str, Any]


def otto_farm(farm: Farm, cwd: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`otto-farm` on this host, against the farm's published Redis."""
    return subprocess.run(
        [sys.executable, "-m", "otto_farm", *args],
        cwd=cwd,
        env=farm.host_env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


TASKS = [f"t{i}" for i in range(1, 9)]


@pytest.fixture(scope="module")
def submitted(farm: Farm, git_server: GitServer, tmp_path_factory: pytest.TempPathFactory) -> Submitted:
    """Eight independent tasks (one batch; each agent sleeps 2 s, so the six job slots of the three
    workers fill before any frees) sent by `otto-farm submit` on this host; the gate checks the base."""
    app = tmp_path_factory.mktemp("app")  # an empty cwd: no otto-farm.toml
    taskset = {
        "repo": git_server.url,
        "agent": {"command": 'sleep 2 && echo "$OTTO_FARM_TASK_KEY" > "$OTTO_FARM_TASK_KEY.txt"'},
        "verify": "true",
        "max_attempts": 1,
        "max_task_runs": 1,
        "tasks": [{"key": key, "prompt": "p"} for key in TASKS],
    }
    (app / "tasks.yaml").write_text(yaml.safe_dump(taskset, sort_keys=False))
    started = time.monotonic()
    submit = otto_farm(farm, app, "submit", "tasks.yaml", timeout_s=240)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-3000:] + farm.logs()
    report(
        "docker compose",
        f"a run of {len(TASKS)} tasks over {WORKERS} workers: {time.monotonic() - started:.1f}s",
    )
    run_id = re.search(r"^run (\S+): ", submit.stdout, re.M).group(1)  # type: ignore[union-attr]
    status = otto_farm(farm, app, "status", run_id, "--json")
    assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
    return Submitted(
        run_id, submit.stdout + submit.stderr + status.stdout + status.stderr, json.loads(status.stdout)
    )


@SLOW
def test_up_is_healthy_with_an_init_and_redis_wants_its_password(farm: Farm) -> None:
    assert len(farm.containers["worker"]) == WORKERS
    for service in ("worker", "control", "pilot", "flower"):
        for container in farm.containers[service]:
            comm = docker("exec", container, "cat", "/proc/1/comm").stdout.strip()
            assert comm == "docker-init", f"{service}: PID 1 is {comm}"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=farm.redis_port, socket_timeout=5).ping()
    assert redis.Redis(port=farm.redis_port, password=PASSWORD, socket_timeout=5).ping()


@SLOW
def test_a_run_from_the_host_spreads_over_the_three_workers(
    farm: Farm, git_server: GitServer, submitted: Submitted
) -> None:
    record = submitted.record
    assert record["status"] == "passed" and f"{len(TASKS)} passed" in submitted.output
    results = {key: state["results"][-1] for key, state in record["tasks"].items()}
    assert set(results) == set(TASKS)
    # Each result names its node, tasks@<container hostname>: every worker container ran some.
    hosts = {farm.hostname(c) for c in farm.containers["worker"]}
    assert {r["worker"].removeprefix("tasks@") for r in results.values()} == hosts, results
    assert {r["sandbox"] for r in results.values()} == {"bwrap"}
    # Merged and pushed: the integration branch on the git server holds every task's file.
    files = subprocess.run(
        ["git", "-C", str(git_server.bare), "ls-tree", "--name-only", record["integration_sha"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert set(files) == {"README.md", *(f"{key}.txt" for key in TASKS)}
    assert PASSWORD not in submitted.output
    # docker-init reaps what the jobs left behind: no zombie in any worker container.
    for container in farm.containers["worker"]:
        zombies = "grep -l '^State:.Z' /proc/[0-9]*/status | wc -l"
        deadline = time.monotonic() + 10
        while (n := docker("exec", container, "sh", "-c", zombies).stdout.strip()) != "0":
            assert time.monotonic() < deadline, f"{n} zombies in {container}"
            time.sleep(0.5)


def flower_get(farm: Farm, path: str, auth: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{farm.flower_port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, b""


@SLOW
def test_flower_answers_with_basic_auth_only(farm: Farm) -> None:
    assert flower_get(farm, "/api/workers", None)[0] == 401
    assert flower_get(farm, "/api/workers", "otto:wrong")[0] == 401
    nodes = {f"tasks@{farm.hostname(c)}" for c in farm.containers["worker"]}
    nodes |= {f"{s}@{farm.hostname(farm.containers[s][0])}" for s in ("control", "pilot")}
    deadline = time.monotonic() + 30
    while True:  # the nodes whose heartbeats Flower has seen
        code, body = flower_get(farm, "/api/workers?status=true", FLOWER_AUTH)
        assert code == 200
        if set(json.loads(body)) >= nodes:
            break
        assert time.monotonic() < deadline, f"Flower saw {body!r}, not {nodes}"
        time.sleep(1)


@SLOW
def test_the_worker_health_check_is_cheap_and_sees_a_stuck_worker(farm: Farm) -> None:
    """The health check of compose's workers, as Docker runs it: 0 while Celery runs, 1 while its main
    process is stopped (SIGSTOP), 0 again once it goes on; and far below `celery inspect ping`'s cost."""
    container = farm.containers["worker"][0]
    test = json.loads(docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}", container).stdout)
    assert test[0] == "CMD-SHELL"
    cost = json.loads(docker("exec", container, "python3", "-c", CHECK_COST, json.dumps(test), "2").stdout)
    assert cost["codes"] == [0, 0], cost
    report(
        "docker compose",
        f"worker health check: {cost['cpu_s']:.3f} CPU-s a time (`celery inspect ping` took ~0.5 CPU-s here)",
    )
    assert cost["cpu_s"] < 0.2, cost  # `celery inspect ping` took 0.5 CPU-s here
    try:
        assert docker("exec", container, "sh", "-c", STOP_CELERY.format("STOP")).returncode == 0
        stuck = docker("exec", container, "sh", "-c", test[1])
        assert stuck.returncode == 1 and "stuck" in stuck.stdout, stuck
    finally:
        docker("exec", container, "sh", "-c", STOP_CELERY.format("CONT"))
    assert docker("exec", container, "sh", "-c", test[1]).returncode == 0


@SLOW
def test_a_restart_keeps_the_runs(farm: Farm, submitted: Submitted, tmp_path: Path) -> None:
    """Redis killed (no shutdown save: the AOF on the volume is what it reads back), then every service
    restarted: the farm comes back healthy and `otto-farm runs` still lists the run, passed."""
    started = time.monotonic()
    assert compose("kill", "-s", "SIGKILL", "redis").returncode == 0
    restart = compose("restart", timeout_s=300)
    assert restart.returncode == 0, restart.stdout[-2000:] + restart.stderr[-2000:]
    wait_healthy(WORKERS + 4)
    report("docker compose", f"kill redis + restart: healthy again in {time.monotonic() - started:.0f}s")
    runs = otto_farm(farm, tmp_path, "runs", "--json")
    assert runs.returncode == 0, runs.stdout[-2000:] + runs.stderr[-2000:]
    assert {r["run_id"]: r["status"] for r in json.loads(runs.stdout)} == {submitted.run_id: "passed"}
