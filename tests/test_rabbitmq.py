"""RabbitMQ as the broker, the session's Redis as result backend and run store: a whole run, for real.

A private rabbitmq-server runs on free loopback ports, or the test is skipped saying what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest

from otto_farm import celery_app, coordinator, taskset
from otto_farm.celery_app import CONTROL_QUEUE, TASKS_QUEUE
from otto_farm.models import RunStatus, TaskStatus
from otto_farm.settings import MAX_JOB_TIMEOUT_S, Settings

from conftest import Worker, a_then_b_and_c, free_port, start_worker, wait_for_run

# Debian's /usr/sbin/rabbitmq-server switches root to the rabbitmq user and its HOME; the script it wraps
# runs as whoever calls it.
DEBIAN_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
SERVER = str(DEBIAN_SERVER) if DEBIAN_SERVER.exists() else shutil.which("rabbitmq-server")
START_TIMEOUT_S = 30
# Jobs are acked when they end: the server must not close a consumer's channel before a job's hard limit
# (timeout_s + 120 s, timeout_s at most MAX_JOB_TIMEOUT_S). docs/deploy.md asks for the same line.
CONSUMER_TIMEOUT_LINE = f"consumer_timeout = {(MAX_JOB_TIMEOUT_S + 3600) * 1000}"


@pytest.fixture
def rabbitmq(tmp_path: Path) -> Iterator[str]:
    """A private RabbitMQ node (own name, ports, cookie, data and config); its amqp:// URL."""
    if SERVER is None:
        pytest.skip("rabbitmq-server not installed (apt-get install rabbitmq-server)")
    base = tmp_path / "rabbitmq"
    base.mkdir()
    (base / "rabbitmq.conf").write_text(CONSUMER_TIMEOUT_LINE + "\n")
    ports: set[int] = set()
    while len(ports) < 2:
        ports.add(free_port())
    port, dist_port = ports
    env = {
        **os.environ,
        "HOME": str(base),  # the Erlang cookie is created here, so only this test can talk to the node
        "RABBITMQ_NODENAME": f"rabbit-{secrets.token_hex(4)}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        # Nothing from /etc/rabbitmq: a system node's plugins would want its ports.
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
    }
    log = base / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [SERVER],
            env=env,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    try:
        wait_until_up(proc, url, log)
        # The firehose: the node copies every message it delivers to amq.rabbitmq.trace, for the test to see.
        ctl = Path(SERVER).with_name("rabbitmqctl")
        subprocess.run([ctl, "trace_on"], env=env, check=True, capture_output=True, timeout=60)
        yield url
    finally:
        # The Erlang VM shuts down cleanly on SIGTERM, and its port programs with it; epmd is shared.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Return once kombu connects to the node; skip the test if it exits or never answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        with kombu.Connection(url, connect_timeout=1) as conn:
            try:
                conn.connect()
                return
            except conn.connection_errors:
                time.sleep(0.2)
    why = f"no answer in {START_TIMEOUT_S} s" if proc.poll() is None else f"exit code {proc.returncode}"
    pytest.skip(
        f"rabbitmq-server ({SERVER}) could not start: {why}; its log {log} ends:\n{log.read_text()[-1500:]}"
    )


@pytest.fixture
def amqp_settings(settings: Settings, rabbitmq: str) -> Iterator[Settings]:
    """The session's settings with RabbitMQ as the broker; the app points back at the session's after."""
    amqp = settings.model_copy(update={"broker_url": rabbitmq})
    celery_app.configure(amqp)
    yield amqp
    celery_app.configure(settings)


@pytest.fixture
def amqp_worker(amqp_settings: Settings) -> Iterator[Worker]:
    w = start_worker(amqp_settings, "rabbit")
    yield w
    w.stop()


@pytest.mark.part("rabbitmq")
def test_run_with_rabbitmq_broker(amqp_settings, amqp_worker, store, make_repo, write_taskset):
    path = write_taskset(a_then_b_and_c(make_repo()))
    with kombu.Connection(amqp_settings.broker_url) as conn:
        # A copy of each message RabbitMQ delivers from the jobs' and the callbacks' queue (the firehose).
        trace = kombu.Exchange("amq.rabbitmq.trace", "topic", passive=True)
        tap = kombu.Queue(
            "tap",
            bindings=[kombu.binding(trace, routing_key=f"deliver.{q}") for q in (TASKS_QUEUE, CONTROL_QUEUE)],
            exclusive=True,
        )(conn)
        tap.declare()
        record = coordinator.start(store, taskset.load(path))
        record = wait_for_run(store, record.run_id, timeout_s=30)
        jobs = {(record.run_id, key) for key in record.tasks}
        delivered = []  # (task name, args) of each message

        def seen() -> tuple[set[tuple[str, ...]], set[int]]:
            return (
                {tuple(args[:2]) for name, args in delivered if name == "otto_farm.run_task"},
                {args[-1] for name, args in delivered if name == "otto_farm.batch_done"},
            )

        # The firehose's copies come on their own time: read until all are in, or for a few seconds.
        deadline = time.monotonic() + 10
        while seen() != (jobs, {0, 1}) and time.monotonic() < deadline:
            if (message := tap.get(no_ack=True)) is None:
                time.sleep(0.1)
                continue
            delivered.append((message.headers["properties"]["headers"]["task"], json.loads(message.body)[0]))

    assert record.status is RunStatus.passed
    assert [b.tasks for b in record.batches] == [["a"], ["b", "c"]]
    assert all(s.status is TaskStatus.passed and s.merged_sha for s in record.tasks.values())
    # RabbitMQ delivered every job and every chord callback (whose last argument is its batch).
    assert seen() == (jobs, {0, 1}), delivered


def test_deploy_doc_asks_for_the_consumer_timeout_the_test_sets():
    assert CONSUMER_TIMEOUT_LINE in (Path(__file__).parents[1] / "docs" / "deploy.md").read_text()
