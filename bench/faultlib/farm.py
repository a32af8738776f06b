"""What every fault needs: a farm in a temp dir driven through the real CLI, an agent that counts its
runs in a log, and the figures read back from the run, that log and the repository.

Every task set runs `sandbox: none`, so the agent can append to a file outside its worktree, and
`max_attempts: 1`, so a task's agent should finish exactly as often as the farm dispatched the task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from stats import table

from otto_farm.embedded import Embedded
from otto_farm.gitops import git
from otto_farm.models import RunRecord, RunStatus, TaskStatus
from otto_farm.settings import Settings
from otto_farm.store import Store

RUN_TIMEOUT_S = 240.0


@dataclass
class Row:
    """One line of the table: a fault, what was done, and the figures it left."""

    fault: str
    done: str
    outcome: str
    lost: int | str = "—"  #: tasks that never finished (or that the fault, not the task, ended)
    ran_twice: int | str = "—"  #: tasks whose agent finished more often than the farm dispatched them
    merged_twice: int | str = "—"  #: tasks merged more than once into the integration branch
    recovery: str = "—"
    notes: str = ""


HEADERS = ["fault", "what was done", "outcome", "lost", "ran twice", "merged twice", "recovery", "notes"]


def markdown(rows: list[Row]) -> str:
    return table(HEADERS, [[getattr(row, f.name) for f in fields(row)] for row in rows])


def wait_for(predicate: Callable[[], object], timeout_s: float = 60, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def secs(seconds: float, to: str) -> str:
    return f"{seconds:.1f} s to {to}"


class Farm:
    """One fault's world: a directory with the repository, the task set, the agent's log and the
    embedded farm's home (`.otto-farm`, given as `OTTO_FARM_HOME`: never the user's own farm), and the
    CLI run from it."""

    def __init__(self, root: Path, name: str, llm_url: str) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.home = self.dir / ".otto-farm"
        self.agent_log = self.dir / "agents.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTTO_FARM_", "ANTHROPIC_"))}
        # Workers reach only the scripted Messages-API server: no real LLM.
        self.env = {
            **clean,
            "OTTO_FARM_HOME": str(self.home),
            "ANTHROPIC_BASE_URL": llm_url,
            "ANTHROPIC_API_KEY": "scripted",
            "COLUMNS": "200",
        }
        self.procs: list[subprocess.Popen[str]] = []
        self.redis_started: list[Embedded] = []

    @property
    def socket(self) -> Path:
        """The embedded Redis's socket: there while this fault's farm is up."""
        return Settings(home=self.home).socket_path

    def otto(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """`otto-farm ARGS` in the foreground."""
        argv = [sys.executable, "-m", "otto_farm", *args]
        return subprocess.run(
            argv, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """`otto-farm ARGS` in the background, in its own session (a worker's pool dies with it)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "otto_farm", *args],
            cwd=self.dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_redis(self) -> None:
        """The embedded Redis alone, started by otto-farm's own code (workers then come separately)."""
        farm = Embedded(Settings(home=self.home))
        farm.start_redis()
        farm.keep()  # as `up` keeps it: a command that joins and leaves the farm (`cancel`) must not stop it
        self.redis_started.append(farm)

    def repo(self, files: int = 1) -> Path:
        """A git repository on `main` with `files` small files committed."""
        repo = self.dir / "repo"
        repo.mkdir()
        git(["init", "-q", "-b", "main"], cwd=repo)
        for i in range(files):
            (repo / f"f{i:05d}.txt").write_text(f"{i}\n")
        git(["add", "-A"], cwd=repo)
        git(["commit", "-qm", "start"], cwd=repo)
        return repo

    def agent(self, body: str) -> str:
        """The agent command: a script that logs `start KEY PID` and `end KEY` around `body`."""
        script = self.dir / "agent.sh"
        script.write_text(
            f'echo "start $OTTO_FARM_TASK_KEY $$" >> {self.agent_log}\n{body}\n'
            f'echo "end $OTTO_FARM_TASK_KEY" >> {self.agent_log}\n'
        )
        return f"bash {script}"

    def taskset(
        self, repo: Path, body: str, tasks: list[dict[str, Any]], name: str = "tasks.yaml", **extra: Any
    ) -> Path:
        data = {
            "repo": str(repo),
            "verify": "true",
            "max_attempts": 1,
            "sandbox": {"kind": "none"},  # the agent appends to a log outside its worktree
            "gate": {"verify": "true"},
            "agent": {"command": self.agent(body)},
            "tasks": tasks,
            **extra,
        }
        path = self.dir / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def said(self, text: str) -> str:
        """What a command printed, quoted for a table cell, its paths shown relative to this fault's dir."""
        return "“" + text.strip().replace(f"{self.dir}/", "").replace("|", "\\|") + "”"

    def agent_runs(self) -> tuple[Counter[str], Counter[str]]:
        """Per task: how often its agent started, and how often it finished."""
        lines = self.agent_log.read_text().split("\n") if self.agent_log.exists() else []
        starts = Counter(line.split()[1] for line in lines if line.startswith("start "))
        ends = Counter(line.split()[1] for line in lines if line.startswith("end "))
        return starts, ends

    def agent_started(self) -> bool:
        return self.agent_log.exists() and "start " in self.agent_log.read_text()

    def agent_pids(self) -> list[int]:
        lines = self.agent_log.read_text().split("\n") if self.agent_log.exists() else []
        return [int(line.split()[2]) for line in lines if line.startswith("start ")]

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The farm's run store; its Redis is started for the block if the farm is down."""
        farm = Embedded(Settings(home=self.home))
        started = not farm.redis_up()
        if started:
            farm.start_redis()
        try:
            yield Store.from_url(f"unix://{self.socket}")
        finally:
            if started:
                farm.stop()

    def figures(self, record: RunRecord, repo: Path, cancelled: bool = False) -> dict[str, int]:
        """lost, ran twice and merged twice, as the table's columns count them."""
        done = {TaskStatus.passed} | ({TaskStatus.skipped} if cancelled else set())
        lost = sum(t.status not in done for t in record.tasks.values())
        _, ends = self.agent_runs()
        ran_twice = sum(ends[k] > t.runs for k, t in record.tasks.items())
        merges = Counter[str]()
        if git(["branch", "--list", record.integration_branch], cwd=repo).strip():
            log_lines = git(["log", "--format=%s", record.integration_branch], cwd=repo).splitlines()
            merges.update(
                s.removeprefix("otto-farm: merge ") for s in log_lines if s.startswith("otto-farm: merge ")
            )
        return {"lost": lost, "ran_twice": ran_twice, "merged_twice": sum(n > 1 for n in merges.values())}

    def close(self) -> None:
        """Stop all this fault started: the farm (`down --force`), background commands, left agents."""
        if self.socket.exists():
            with suppress(subprocess.TimeoutExpired):
                self.otto("down", "--force", timeout=60)
        for farm in self.redis_started:
            farm.stop()
        for proc in self.procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
        for pid in self.agent_pids():  # an agent whose job was killed under `none` outlives it
            with suppress(OSError):
                if b"agent.sh" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.killpg(pid, signal.SIGKILL)


def wait_run(store: Store, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> RunRecord:
    """The run's record once it ends, or as it stands after `timeout_s` (a run left running)."""
    deadline = time.monotonic() + timeout_s
    while (record := store.get(run_id)).status is RunStatus.running and time.monotonic() < deadline:
        time.sleep(0.2)
    return record


def event_times(store: Store, run_id: str, kind: str) -> list[float]:
    """When each event of `kind` was emitted (the emitter's wall clock: this machine's)."""
    return [float(e["ts"]) for _, e in store.events(run_id) if e["kind"] == kind]


def run_id_of(stdout: str) -> str:
    """The run id from submit's first line, `run ID: N tasks on …`."""
    return stdout.split()[1].rstrip(":")
