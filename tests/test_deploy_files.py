"""Deploy files: honcho runs the Procfile for real; docker-compose.yml and the Dockerfile are parsed,
and every command the compose file runs is parsed by the real `otto-farm` / `celery` command line
(tests/test_compose.py runs the compose file itself, where Docker is).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from celery.bin.celery import celery as celery_cli

from otto_farm.celery_app import CONTROL_QUEUE, PILOT_QUEUE, TASKS_QUEUE
from otto_farm.cli.main import app
from otto_farm.embedded import Embedded
from otto_farm.settings import Settings

from conftest import free_port

ROOT = Path(__file__).parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OTTO_SERVICES = ("worker", "control", "pilot", "flower")
QUEUE_OF = {"worker": TASKS_QUEUE, "control": CONTROL_QUEUE, "pilot": PILOT_QUEUE}


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if re.match(r"^[A-Za-z0-9_-]+:", line))


def argv_of(command: str | list[str]) -> list[str]:
    """A command as its argv: ${VAR:-default} as its default, an `env -u NAME` prefix dropped."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    argv = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", arg) for arg in argv]
    while argv[0] == "env" and argv[1] == "-u":
        argv = argv[3:]
    return argv


def check_entry_point(argv: list[str]) -> Any:
    """Parse argv with the real `otto-farm` or `celery` command line (nothing runs); its context."""
    program, *args = argv
    if program == "otto-farm":
        group: Any = typer.main.get_command(app)
        names = group.list_commands(None)  # the CLI loads a command only when it runs
        assert args[0] in names, f"{args[0]} is not an otto-farm command: {names}"
        return group.get_command(None, args[0]).make_context(args[0], args[1:])
    assert program == "celery", f"{argv} runs neither otto-farm nor celery"
    assert args[:2] == ["-A", "otto_farm.celery_app"], argv
    name, *rest = args[2:]
    assert name in celery_cli.commands, f"{name} is not a celery command"
    return celery_cli.commands[name].make_context(name, rest, obj=None)


@pytest.mark.parametrize("service", OTTO_SERVICES)
def test_compose_service_commands_name_real_entry_points(service):
    spec = SERVICES[service]
    ctx = check_entry_point(argv_of(spec["command"]))
    test = spec["healthcheck"]["test"]
    # Cheap checks: a shell, no Python and no Celery (`celery inspect ping` took 0.5 CPU-s and 65 MB);
    # tests/test_compose.py runs them, and sees the workers' one fail on a stopped Celery.
    assert not re.search(r"\bpython|celery -A|otto-farm ", " ".join(test)), test
    if service in QUEUE_OF:
        assert ctx.info_name == "worker" and ctx.params["queues"] == QUEUE_OF[service]
        assert test[0] == "CMD-SHELL"
        # The Celery main process is docker-init's child, and holds a connection to Redis's port.
        assert "/proc/1/task/1/children" in test[1] and f":{6379:04X} 01 " in test[1]
    else:
        assert ctx.info_name == "flower" and ctx.params["address"] == "0.0.0.0"
        assert "OTTO_FARM_FLOWER_BASIC_AUTH" in spec["environment"]
        assert any(str(p).endswith(f":{ctx.params['port']}") for p in spec["ports"])
        assert f"/dev/tcp/127.0.0.1/{ctx.params['port']}" in test[-1] and "/healthcheck" in test[-1]
    assert spec["build"] == "." and spec["depends_on"]["redis"]["condition"] == "service_healthy"
    assert spec["init"] is True  # docker-init as PID 1 reaps what jobs leave behind
    # Every URL carries Redis's password.
    url = "redis://:${OTTO_FARM_REDIS_PASSWORD}@redis:6379"
    env = spec["environment"]
    assert env["OTTO_FARM_BROKER_URL"] == f"{url}/0"
    assert env["OTTO_FARM_RESULT_BACKEND"] == env["OTTO_FARM_STORE_URL"] == f"{url}/1"


def test_compose_worker_scales_and_redis_persists():
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` would clash
    assert all("container_name" not in spec for spec in SERVICES.values())
    assert "ANTHROPIC_API_KEY" in worker["environment"]
    # Only Flower gets its password: the task worker runs agent commands.
    assert [
        name
        for name, spec in SERVICES.items()
        if "OTTO_FARM_FLOWER_BASIC_AUTH" in spec.get("environment", {})
    ] == ["flower"]
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in COMPOSE["volumes"]
    # A password, without which compose refuses to run (`${VAR:?message}`); the health check's redis-cli
    # reads it from REDISCLI_AUTH (and prints NOAUTH, exiting 0, without it: hence the grep).
    assert command[command.index("--requirepass") + 1].startswith("${OTTO_FARM_REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"] == "${OTTO_FARM_REDIS_PASSWORD}"
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -qx PONG"]
    # Published ports listen on the host's loopback only.
    assert all(str(p).startswith("127.0.0.1:") for spec in SERVICES.values() for p in spec.get("ports", []))


def test_dockerfile_installs_the_package_with_what_it_needs():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"apt-get install[^\n]*\bgit\b", text)
    assert re.search(r"^RUN pip install --no-cache-dir \.$", text, re.M)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    copied = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    sources = {src for srcs in copied for src in srcs}
    # The wheel needs the package, README (the project's readme) and the force-included tasks/ and config/.
    assert {"pyproject.toml", "README.md", "otto_farm", "tasks", "config"} <= sources
    assert all((ROOT / src).exists() and src not in ignored for src in sources)
    assert re.search(r"^USER (?!root)", text, re.M)


def test_procfile_names_the_four_processes_on_their_queues():
    procs = procfile()
    assert set(procs) == {"worker", "control", "pilot", "flower"}
    for name, command in procs.items():
        ctx = check_entry_point(argv_of(command))
        if name in QUEUE_OF:
            assert ctx.info_name == "worker" and ctx.params["queues"] == QUEUE_OF[name]
        else:
            assert ctx.info_name == "flower" and ctx.params["address"] == "127.0.0.1"


@pytest.fixture
def redis_farm() -> Iterator[Settings]:
    """A Redis of its own, so that only the Procfile's workers (not the session's) serve the run."""
    home = Path(tempfile.mkdtemp(prefix="ottofarm-h-"))  # short: unix socket paths are limited
    farm = Embedded(Settings(home=home))
    farm.start_redis()
    try:
        yield farm.settings
    finally:
        farm.stop()
        shutil.rmtree(home, ignore_errors=True)


def flower_workers(port: int, auth: str) -> set[str]:
    """The nodes whose heartbeat Flower has seen; empty while it is not answering."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers?status=true")
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return set(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        exc.close()
        return set()
    except OSError:
        return set()


@pytest.mark.part("honcho")
@pytest.mark.timeout(150)
def test_honcho_runs_the_procfile_and_a_run_completes(redis_farm, make_repo, write_taskset, tmp_path):
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or shutil.which("honcho")
    if not honcho:
        pytest.skip("honcho is not installed (pip install -e '.[dev]')")
    auth, port = "otto:procfile-pw", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTTO_FARM_", "FLOWER_", "ANTHROPIC_"))}
    env.update(
        redis_farm.env(),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the venv's otto-farm
        OTTO_FARM_FLOWER_PORT=str(port),
    )
    app_root = tmp_path / "app"  # an empty cwd: no stray otto-farm.toml or .env
    app_root.mkdir()
    log = tmp_path / "honcho.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [honcho, "start", "--no-colour", "-f", str(ROOT / "Procfile"), "-d", str(app_root)],
            env={**env, "OTTO_FARM_FLOWER_BASIC_AUTH": auth},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        repo = make_repo()
        path = write_taskset(
            {
                "repo": str(repo),
                # Honcho hands every process the same environment: the agent must not see Flower's password.
                "agent": {
                    "command": 'test -z "${OTTO_FARM_FLOWER_BASIC_AUTH:-}" && touch "$OTTO_FARM_TASK_KEY"'
                },
                "verify": "true",  # a failed agent command (the password seen) fails the task already
                "max_attempts": 1,
                "max_task_runs": 1,
                "tasks": [{"key": "a", "prompt": "p"}, {"key": "b", "prompt": "p", "depends_on": ["a"]}],
            }
        )
        submit = subprocess.run(
            [sys.executable, "-m", "otto_farm", "submit", str(path)],
            cwd=app_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=100,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr + log.read_text()[-3000:]
        assert "2 passed" in submit.stdout
        deadline = time.monotonic() + 20
        while not {"tasks", "control", "pilot"} <= {
            node.split("-")[0] for node in flower_workers(port, auth)
        }:
            assert time.monotonic() < deadline, "Flower saw no heartbeat of the three workers"
            time.sleep(0.3)
    finally:
        stop_honcho(proc, log)
    assert proc.returncode is not None


def stop_honcho(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM to honcho, which stops its processes (SIGKILL after 5 s); then make sure none is left."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # Each process runs in its own session, out of honcho's reach once honcho is gone.
    for pid in re.findall(r"started \(pid=(\d+)\)", log.read_text()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)
