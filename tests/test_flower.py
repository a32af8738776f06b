"""`otto-farm flower` for real: Flower on the test Redis, behind basic auth, listing a run's jobs."""

from __future__ import annotations

import ast
import base64
import json
import os
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
from typer.testing import CliRunner

from otto_farm.cli.flower import is_loopback, masked_url
from otto_farm.cli.main import app
from otto_farm.settings import Settings

from conftest import Worker, free_port

USER, PASSWORD = "otto", "flower-test-pw"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without otto-farm, Flower or Anthropic settings, plus `extra`."""
    drop = ("OTTO_FARM_", "FLOWER_", "ANTHROPIC_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """Status and body of a GET; an HTTP error is a status, not an exception."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the response open: close it, filterwarnings=error turns a leak into a failure
            return exc.code, exc.read().decode()


@dataclass
class Flower:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, str]:
        return get(self.url + path, auth)

    def wait(self, ready: Any, what: str, timeout_s: float = 20) -> Any:
        """Poll `ready()` until it returns something truthy."""
        deadline = time.monotonic() + timeout_s
        while not (value := ready()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Flower: no {what}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return value


@pytest.fixture
def flower(settings: Settings, worker: Worker, tmp_path: Path) -> Iterator[Flower]:
    """`otto-farm flower` on a free loopback port with basic auth, once it has seen the worker's heartbeat."""
    yield from started_flower(settings, tmp_path, OTTO_FARM_FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")


def started_flower(settings: Settings, tmp_path: Path, **auth: str) -> Iterator[Flower]:
    port = free_port()
    log = tmp_path / "flower.log"
    env = clean_env(**settings.env(), **auth)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "otto_farm", "flower", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    fl = Flower(f"http://127.0.0.1:{port}", proc, log)
    try:

        def heartbeat_seen() -> bool:
            # status=true comes from Flower's event state: the worker's heartbeat proves events arrive.
            try:
                code, body = fl.api("/api/workers?status=true")
            except OSError:
                return False
            return code == 200 and any("main@" in name for name in json.loads(body))

        def serving() -> bool:
            try:
                return fl.api("/", auth=None)[0] == 200
            except OSError:
                return False

        fl.wait(heartbeat_seen if auth else serving, "worker heartbeat" if auth else "Flower")
        yield fl
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_flower_lists_the_runs_jobs_with_credentials_and_answers_401_without(
    flower, run_taskset, make_repo, write_taskset, settings
):
    repo = make_repo()
    path = write_taskset(
        {
            "repo": str(repo),
            "verify": "true",
            "agent": {"command": "touch $OTTO_FARM_TASK_KEY.txt"},
            "tasks": [{"key": "one", "prompt": "p"}, {"key": "two", "prompt": "p"}],
        }
    )
    record = run_taskset(path)
    assert record.status.value == "passed"
    run_id = record.run_id
    expected = {f"{run_id}.b0.{key}.r1": [run_id, key, 1, 0] for key in ("one", "two")}

    def listed() -> dict[str, Any] | None:
        code, body = flower.api("/api/tasks?taskname=otto_farm.run_task")
        tasks = json.loads(body) if code == 200 else {}
        done = all(tasks.get(tid, {}).get("state") == "SUCCESS" for tid in expected)
        return tasks if done else None

    tasks = flower.wait(listed, "run_task jobs of the run")
    for task_id, args in expected.items():
        # Only run id, task key, run number and batch index travel as arguments: nothing secret.
        assert tasks[task_id]["name"] == "otto_farm.run_task"
        assert list(ast.literal_eval(tasks[task_id]["args"])) == args
        assert ast.literal_eval(tasks[task_id]["kwargs"]) == {}
    # The chord callback's first argument is the header's results (Celery's design), then run id and batch.
    code, body = flower.api(f"/api/task/info/{run_id}.b0.done")
    assert code == 200 and json.loads(body)["name"] == "otto_farm.batch_done"
    args = json.loads(body)["args"]
    assert args.startswith("([{'status': 'passed'") and f"'run_id': '{run_id}'" in args
    code, body = flower.api("/api/tasks")
    for secret in ("scripted-test-key", PASSWORD, str(settings.socket_path)):
        assert secret not in body

    assert flower.api("/api/tasks", auth=None)[0] == 401
    assert flower.api("/api/tasks", auth=(USER, "wrong"))[0] == 401
    assert flower.api("/api/workers", auth=None)[0] == 401
    assert flower.api("/", auth=None)[0] == 401


def test_flower_shows_a_failed_task_as_failure_and_no_sweeps(flower, run_taskset, make_repo, write_taskset):
    path = write_taskset(
        {
            "repo": str(make_repo()),
            "max_attempts": 1,
            "max_task_runs": 1,
            "pilot": {"enabled": False},
            "verify": "test -f good.txt",
            "agent": {"command": "touch $OTTO_FARM_TASK_KEY.txt"},
            "tasks": [{"key": "good", "prompt": "p"}, {"key": "bad", "prompt": "p"}],
        }
    )
    record = run_taskset(path)  # the chord's callback ran: the run ended
    assert record.status.value == "failed" and record.tasks["bad"].status.value == "failed"
    good, bad = (f"{record.run_id}.b0.{key}.r1" for key in ("good", "bad"))

    def ended() -> dict[str, Any] | None:
        code, body = flower.api("/api/tasks")
        tasks = json.loads(body) if code == 200 else {}
        return (
            tasks
            if all(tasks.get(t, {}).get("state") in ("SUCCESS", "FAILURE") for t in (good, bad))
            else None
        )

    tasks = flower.wait(ended, "the run's jobs ended")
    assert tasks[bad]["state"] == "FAILURE" and tasks[bad]["exception"] == "task failed (verify_failed)"
    assert tasks[good]["state"] == "SUCCESS" and tasks[good]["result"].startswith("{'status': 'passed'")
    # The worker swept every second while the run ran (conftest): none of it reached Flower.
    assert not [t for t in tasks.values() if t["name"] == "otto_farm.sweep"]
    assert tasks[f"{record.run_id}.b0.done"]["state"] == "SUCCESS"


def test_flower_on_loopback_without_auth_says_how_to_reach_its_api(settings, worker, tmp_path):
    for fl in started_flower(settings, tmp_path):
        assert fl.api("/api/tasks", auth=None)[0] == 401
        line = fl.log.read_text().splitlines()[0]
        assert line.startswith(f"Flower on {fl.url} (basic auth off)")
        assert "its API (/api/…) answers 401: set OTTO_FARM_FLOWER_BASIC_AUTH=user:password" in line


def test_flower_refuses_to_listen_beyond_loopback_without_basic_auth():
    # A password in the broker URL must not reach the output.
    proc = subprocess.run(
        [sys.executable, "-m", "otto_farm", "flower", "--address", "0.0.0.0"],
        env=clean_env(OTTO_FARM_BROKER_URL="redis://:s3cret@127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "OTTO_FARM_FLOWER_BASIC_AUTH" in proc.stderr and "CVE-2022-30034" in proc.stderr
    assert "s3cret" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--address", ""], {}, "every interface is beyond loopback"),
        (["--address", "::"], {}, "OTTO_FARM_FLOWER_BASIC_AUTH=user:password"),
        ([], {"OTTO_FARM_FLOWER_BASIC_AUTH": "justapassword"}, "OTTO_FARM_FLOWER_BASIC_AUTH: expected"),
        ([], {"OTTO_FARM_FLOWER_BASIC_AUTH": "u:p,:nouser"}, "OTTO_FARM_FLOWER_BASIC_AUTH: expected"),
        ([], {}, "no embedded farm is up"),
    ],
)
def test_flower_input_errors_are_one_line_and_exit_2(args, env, expected, monkeypatch, tmp_path):
    for name in [k for k in os.environ if k.startswith(("OTTO_FARM_", "FLOWER_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTTO_FARM_HOME", str(tmp_path))  # no embedded farm up there
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["flower", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "justapassword" not in result.output


def test_loopback_and_masking_helpers():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not any(is_loopback(a) for a in ("", "0.0.0.0", "::", "10.1.2.3", "no-such-host.invalid"))
    assert masked_url("redis://:s3cret@redis:6379/0") == "redis://:**@redis:6379/0"
    assert "s3cret" not in masked_url("amqp://user:s3cret@rabbit:5672//")
