"""The cache's persistent object reader on real repositories: run as every farm git command is, fresh
after writes, a process of its own per worker process, back after a crash, and what it saves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otto_farm import gitops, gitread


@pytest.fixture
def slot_repo(make_repo, tmp_path):
    """A repository, its cache (fetched) and base commit."""
    repo = make_repo({"README.md": "demo\n", "src/a.py": "a\n", "src/b.py": "b\n"})
    cache = gitops.RepoCache(tmp_path / "work", str(repo))
    cache.fetch(["main"])
    return repo, cache, gitops.git(["rev-parse", "main"], cwd=repo).strip()


def proc_view(pid: int) -> tuple[list[str], dict[str, str]]:
    """A running process's command line and environment, as the kernel has them."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")[:-1]
    return [a.decode() for a in argv], dict(e.decode().partition("=")[::2] for e in env)


def test_the_reader_runs_as_every_farm_git_command(slot_repo):
    """Its cat-file has the overrides on its command line, the farm's git dirs (a `commondir` planted
    in the cache is not followed) and identity in its environment, and reads the farm's own config."""
    _, cache, base = slot_repo
    with open(cache.git_dir / "config", "a") as fh:  # an agent's addition, put back before the start
        fh.write("[core]\n\tfsmonitor = /bin/false\n")
    assert cache.has_commit(base)
    pid = cache.reader().running_pid()
    assert pid is not None
    argv, env = proc_view(pid)
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    assert options == list(gitops.OVERRIDES) and argv[-2:] == ["cat-file", "--batch-check"]
    assert env["GIT_DIR"] == env["GIT_COMMON_DIR"] == str(cache.git_dir)
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["LC_ALL"] == "C"
    assert {k: env[k] for k in gitops.IDENTITY} == gitops.IDENTITY
    assert "fsmonitor" not in (cache.git_dir / "config").read_text()


def test_answers_follow_what_other_processes_write(slot_repo):
    repo, cache, base = slot_repo
    with cache.slot(base) as wt:
        gitops.reset(wt, "otto-farm/r/a", base)
        assert gitops.head(wt) == base
        (wt / "a.txt").write_text("a\n")
        assert gitops.commit_all(wt, "a")
        assert gitops.head(wt) == gitops.git(["rev-parse", "HEAD"], cwd=wt).strip() != base
        gitops.git(["checkout", "-q", "--detach", base], cwd=wt)  # an agent leaves HEAD detached
        assert gitops.head(wt) == base
    (repo / "b.txt").write_text("b\n")
    gitops.git(["add", "-A"], cwd=repo)
    gitops.git(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "b"], cwd=repo)
    new = gitops.git(["rev-parse", "main"], cwd=repo).strip()
    assert not cache.has_commit(new) and not cache.has_commit("0" * 40) and not cache.has_commit("x\ny")
    cache.fetch(["main"])
    assert cache.has_commit(new)


def test_answers_git_explains_on_stderr_never_block_the_reader(slot_repo):
    """`<tree>^{commit}` is answered `missing` with an error on stderr, a pipe GitPython never reads:
    some 550 of them (64 KiB) filled it, and the reader blocked for good."""
    _, cache, base = slot_repo
    tree = cache.resolve(f"{base}^{{tree}}")
    assert tree is not None
    for _ in range(800):
        assert not cache.has_commit(tree)
    assert cache.has_commit(base)


def test_a_reader_that_died_is_started_again(slot_repo):
    _, cache, base = slot_repo
    assert cache.has_commit(base)
    first = cache.reader().running_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)
    assert cache.has_commit(base)
    assert cache.reader().running_pid() not in (None, first)


def test_a_forked_child_gets_its_own_reader_and_leaves_the_parents_alone(slot_repo):
    """Celery's prefork workers are forked: a child must not talk on, nor end, its parent's pipe."""
    _, cache, base = slot_repo
    assert cache.has_commit(base)
    parent_pid = cache.reader().running_pid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and leaves at once
        try:
            answer = f"{cache.has_commit(base)} {cache.reader().running_pid()}"
        except BaseException as exc:
            answer = repr(exc)
        os.write(write, answer.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as fh:
        found, child_reader = fh.read().split()
    assert found == "True" and child_reader != str(parent_pid)
    assert cache.has_commit(base) and cache.reader().running_pid() == parent_pid


def test_a_worker_keeps_readers_only_for_the_caches_it_used_last(make_repo, tmp_path):
    caches = []
    for n in range(gitread.READERS_MAX + 1):
        repo = make_repo(name=f"repo{n}")
        caches.append(gitops.RepoCache(tmp_path / "work", str(repo)))
        caches[-1].fetch(["main"])
        assert caches[-1].has_commit(gitops.git(["rev-parse", "main"], cwd=repo).strip())
    first = caches[0].reader()  # started anew: the first cache's reader was ended for the last one's
    assert first.running_pid() is None and all(c.reader().running_pid() for c in caches[2:])


def test_a_reader_ends_with_its_process(slot_repo):
    """A worker process killed outright leaves no cat-file behind: it reads EOF and exits."""
    _, cache, base = slot_repo
    script = (
        "import sys, time; from pathlib import Path; from otto_farm import gitops\n"
        "c = gitops.RepoCache(Path(sys.argv[1]), sys.argv[2])\n"
        "assert c.has_commit(sys.argv[3]); print(c.reader().running_pid(), flush=True); time.sleep(60)\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script, str(cache.root.parent.parent), cache.repo, base],
        stdout=subprocess.PIPE,
    )
    assert worker.stdout is not None
    reader_pid = int(worker.stdout.readline())
    worker.kill()
    worker.wait()
    worker.stdout.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{reader_pid}").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{reader_pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state == "Z":  # exited, waiting for init to reap it
            break
        time.sleep(0.05)
    else:
        assert not Path(f"/proc/{reader_pid}").exists()


def git_starts(trace: Path) -> list[str]:
    """The git commands started while GIT_TRACE2 wrote to `trace` (git's own record of each process)."""
    if not trace.exists():
        return []
    return [line.split(" start ", 1)[1] for line in trace.read_text().splitlines() if " start " in line]


def test_a_jobs_reads_start_no_git_process(slot_repo, tmp_path, monkeypatch):
    """Measured per job before the reader: `cat-file -e` for the base, `ls-tree` in each slot, and
    `rev-parse HEAD` after the agent (and after each merge): now questions on one running process,
    and one `ls-tree` per base and cache."""
    _, cache, base = slot_repo
    assert cache.has_commit(base)  # the reader runs from here on
    trace = tmp_path / "trace2"
    with cache.slot(base) as first, cache.slot(base) as second:
        monkeypatch.setenv("GIT_TRACE2", str(trace))
        assert gitops.layout(first, base) == gitops.layout(second, base) == "README.md\nsrc/ (2 files)"
        for wt in (first, second):
            assert cache.has_commit(base) and gitops.head(wt) == base
    overrides = " ".join(f"-c {kv}" for kv in gitops.OVERRIDES)
    assert git_starts(trace) == [f"git {overrides} ls-tree -r -z --name-only {base}"]
