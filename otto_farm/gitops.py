"""Git operations: the per-worker repository cache, reusable worktree slots, commits, pushes, merges."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from git import Git

from otto_farm import gitread
from otto_farm.errors import GitError

IDENTITY = {
    "GIT_AUTHOR_NAME": "otto-farm",
    "GIT_AUTHOR_EMAIL": "otto-farm@localhost",
    "GIT_COMMITTER_NAME": "otto-farm",
    "GIT_COMMITTER_EMAIL": "otto-farm@localhost",
}
# Over the worker's environment, with LC_ALL=C that GitPython adds (git's words are parsed).
FARM_ENV = {**IDENTITY, "GIT_TERMINAL_PROMPT": "0"}
URL_LIKE = re.compile(r"^([a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)")
# What `git commit` says (LC_ALL=C) when the index matches HEAD: with or without untracked files left.
NOTHING_TO_COMMIT = re.compile(r"^(nothing|no changes) (added )?to commit", re.MULTILINE)
# On every git command line, where they outrank every config file. A hook needs no config at all (an
# executable in cache.git/hooks is enough), so hooks point at nothing; the rest are settings a user's
# own config may hold that would make a farm command run a program (fsmonitor, gpg) or step into
# submodules of the agent's making, whose config the farm does not own. And no `maintenance run --auto`
# after each commit, merge and fetch: a process each, with nothing to do in a cache that never gcs.
OVERRIDES = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "commit.gpgSign=false",
    "submodule.recurse=false",
    "maintenance.auto=false",
)
# The caches, and the slots they handed out in this process: git runs there as RepoCache.git_env says.
_OWNED: dict[Path, RepoCache] = {}


def _run(args: list[str], cwd: Path | None) -> subprocess.CompletedProcess[str]:
    """One git process through GitPython's command layer, stdin closed, output decoded loss-free."""
    env = dict(FARM_ENV)
    if cwd is not None:
        if not (cwd.is_dir() and os.access(cwd, os.X_OK)):  # GitPython would run it in the worker's cwd
            raise GitError(args, f"{cwd}: not a directory")
        if cache := _OWNED.get(cwd):
            env.update(cache.git_env(cwd))
    command = ["git", *(arg for kv in OVERRIDES for arg in ("-c", kv)), *args]
    status, out, err = Git(cwd).execute(
        command, env=env, with_extended_output=True, with_exceptions=False, strip_newline_in_stdout=False
    )
    return subprocess.CompletedProcess(command, status, out, err)


def git(args: list[str], cwd: Path | None = None, check: bool = True) -> str:
    """Run git; return stdout, or raise GitError with its output."""
    proc = _run(args, cwd)
    if check and proc.returncode != 0:
        raise GitError(args, proc.stderr + proc.stdout)
    return proc.stdout


def succeeds(args: list[str], cwd: Path | None = None) -> bool:
    return _run(args, cwd).returncode == 0


def is_url(repo: str) -> bool:
    return bool(URL_LIKE.match(repo))


def remote_heads(repo: str) -> dict[str, str]:
    """Branch name → sha of a repository given by path or URL (raises GitError if it is not one)."""
    heads = {}
    for line in git(["ls-remote", "--heads", repo]).splitlines():
        sha, ref = line.split("\t", 1)
        heads[ref.removeprefix("refs/heads/")] = sha
    return heads


def remote_default_branch(repo: str) -> str | None:
    for line in git(["ls-remote", "--symref", repo, "HEAD"]).splitlines():
        if line.startswith("ref: "):
            return line.split()[1].removeprefix("refs/heads/")
    return None


@contextmanager
def _flock(path: Path, blocking: bool = True, shared_on: bool = False) -> Iterator[int | None]:
    """Hold an exclusive lock on `path` for the block: its descriptor, or None if it is taken.

    With `shared_on`, the lock is let go by closing the descriptor alone, never unlocked outright:
    a process the descriptor was handed to keeps the lock for as long as it lives.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        try:
            yield fh.fileno()
        finally:
            if not shared_on:
                fcntl.flock(fh, fcntl.LOCK_UN)


def check_own_branch(branch: str, run_id: str, named_branch: str | None = None) -> None:
    """Refuse a branch the farm must not push: only run `run_id`'s own `otto-farm/<run>/…` branches and
    the integration branch its task set names go out, so no mistake force-pushes over a user's branch."""
    if not (branch.startswith(f"otto-farm/{run_id}/") or branch == named_branch):
        raise GitError(["push", "origin", branch], f"refused: {branch!r} is not a branch of run {run_id}")


def _config_text(url: str) -> str:
    """The cache's whole git config, as the farm writes it: the URL quoted, so it cannot end its line."""
    quoted = url.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return (
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
        f'[remote "origin"]\n\turl = "{quoted}"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
        "[gc]\n\tauto = 0\n"  # no gc under concurrent jobs
    )


@dataclass
class MergeOutcome:
    sha: str
    merged: list[str] = field(default_factory=list)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    chain: list[tuple[str, str]] = field(default_factory=list)  # (key, sha after its merge): candidates


class RepoCache:
    """One bare clone of `repo` per worker work dir, shared by its concurrent jobs through file locks.

    Worktrees live in numbered slots and are reused from job to job: resetting a used tree to a nearby
    commit rewrites only the files that differ, where a fresh checkout writes every file.

    An agent writes its worktree (`.git` file included) and, unsandboxed, the cache's git dir: the
    farm's own git commands here find their git dirs from `git_env`, not from a `.git` or `commondir`
    file, and read a config `git_env` has just put back to the farm's own text. That is the only
    repository config git reads (it reads a config.worktree only when that one says so), so no
    .gitattributes can name a filter, merge or diff driver of the agent's, nor can the config name a
    program (fsmonitor, ssh, credential helper, include). Put back rather than refused: the job that
    finds the change is seldom the one that made it. This undoes what was planted for later; a process
    rewriting the config while a farm command starts could still win the race, which only a sandbox
    keeping the cache read-only prevents. The user's system and global config (credential helpers for
    pushing) stay in force: agents must not write those either.
    """

    def __init__(self, work_dir: Path, repo: str) -> None:
        self.repo = repo
        self.root = work_dir / "repos" / hashlib.sha1(repo.encode()).hexdigest()[:16]
        self.git_dir = self.root / "cache.git"
        self.slot_locks: dict[Path, int] = {}
        _OWNED[self.git_dir] = self

    def git_env(self, cwd: Path) -> dict[str, str]:
        """Environment for git in the cache or one of its slots (see the class docstring)."""
        config, text = self.git_dir / "config", _config_text(self.repo)
        if not (config.is_file() and config.read_text() == text):  # is_file: never block on a fifo
            fd, tmp = tempfile.mkstemp(dir=self.git_dir, prefix="config.")
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, config)  # whole, for concurrent git processes to read
        if cwd == self.git_dir:  # a `commondir` file planted in the cache would name another git dir
            return {"GIT_DIR": str(cwd), "GIT_COMMON_DIR": str(cwd)}
        return {
            "GIT_DIR": str(self.git_dir / "worktrees" / cwd.name),
            "GIT_COMMON_DIR": str(self.git_dir),
            "GIT_WORK_TREE": str(cwd),
        }

    def fetch(self, refs: list[str]) -> None:
        """Bring branches of the remote into refs/remotes/origin/ (created on first use)."""
        with _flock(self.root / "cache.lock"):
            if not (self.git_dir / "HEAD").exists():
                git(["init", "--bare", "-q", str(self.git_dir)])  # git_env writes its config
            specs = [f"+refs/heads/{r}:refs/remotes/origin/{r}" for r in refs]
            git(["fetch", "-q", "--no-tags", "origin", *specs], cwd=self.git_dir)

    def reader(self) -> gitread.Reader:
        """This process's persistent reader of the cache, run as every farm git command is."""
        return gitread.reader(self.git_dir, OVERRIDES, lambda: {**FARM_ENV, **self.git_env(self.git_dir)})

    def resolve(self, name: str) -> str | None:
        """The sha `name` stands for in the cache, or None; no git process of its own."""
        return self.reader().resolve(name) if (self.git_dir / "HEAD").is_file() else None

    def has_commit(self, sha: str) -> bool:
        try:  # asked by every job, and by the gate: a question on the reader's pipe, not a process
            return self.resolve(f"{sha}^{{commit}}") is not None
        except GitError:  # a cache another job is still creating
            return False

    @contextmanager
    def slot(self, sha: str) -> Iterator[Path]:
        """A worktree no other job of this work dir is using, created at `sha` on first use.

        Its lock's descriptor is `slot_locks[path]` while held: handed to the job's commands, it keeps
        the slot from the next job while any process they left behind lives (sandbox/none.py).
        """
        n = 0
        while True:
            path = self.root / f"slot-{n}"
            with _flock(self.root / f"slot-{n}.lock", blocking=False, shared_on=True) as fd:
                if fd is not None:
                    _OWNED[path] = self  # `worktree add` names its git dir worktrees/slot-N, after prune
                    if not (path / ".git").exists():
                        with _flock(self.root / "cache.lock"):
                            git(["worktree", "prune"], cwd=self.git_dir)
                            git(["worktree", "add", "-q", "--detach", str(path), sha], cwd=self.git_dir)
                    self.slot_locks[path] = fd
                    try:
                        yield path
                    finally:
                        del self.slot_locks[path]
                    return
            n += 1


def reset(worktree: Path, branch: str, sha: str) -> None:
    """Point the worktree at `sha` on `branch`, dropping every change and untracked or ignored file.

    A slot keeps its last branch checked out after its job (letting go would cost a git process per
    job): `--ignore-other-worktrees` lets another slot take such a branch, e.g. for the task's retry.
    """
    git(["checkout", "-q", "-f", "--ignore-other-worktrees", "-B", branch, sha], cwd=worktree)
    git(["clean", "-q", "-ffdx"], cwd=worktree)


def untracked(worktree: Path) -> list[str]:
    """Untracked paths, a directory standing for everything below it (so a venv is one entry)."""
    out = git(["status", "--porcelain", "-z", "--untracked-files=normal"], cwd=worktree)
    return [entry[3:] for entry in out.split("\0") if entry.startswith("?? ")]


def commit_all(worktree: Path, message: str, exclude: Sequence[str] = ()) -> bool:
    """Commit every change in the worktree except `exclude`; False when there was nothing to commit."""
    git(["add", "-A", "--", ".", *(f":(exclude,literal){p}" for p in exclude)], cwd=worktree)
    args = ["commit", "-q", "--no-verify", "-m", message]
    proc = _run(args, worktree)
    if proc.returncode == 0:
        return True
    # Committing first and asking only on failure saves a git process per job; git's own words say
    # "nothing to commit", and should they change, the index still does.
    if NOTHING_TO_COMMIT.search(proc.stdout) or succeeds(["diff", "--cached", "--quiet"], cwd=worktree):
        return False
    raise GitError(args, proc.stderr + proc.stdout)


def layout(repo: Path, sha: str, max_lines: int = 40) -> str:
    """The tree of commit `sha` at a glance: top-level files, and each top-level folder with its file count.

    Kept per commit and cache: every job on the same base asks for the same tree, in whichever slot.
    """
    cache = _OWNED.get(repo)
    return _layout(cache.git_dir if cache else repo, sha, max_lines)


@functools.lru_cache(maxsize=64)
def _layout(repo: Path, sha: str, max_lines: int) -> str:
    # One `ls-tree -r`, not the reader: walking a tree over the pipe costs a question per folder, which
    # measured 11× slower than ls-tree on 2,000 files and 33× on 20,000.
    counts: dict[str, int] = {}
    for path in git(["ls-tree", "-r", "-z", "--name-only", sha], cwd=repo).split("\0"):
        if path:
            top, _, rest = path.partition("/")
            name = f"{top}/" if rest else top
            counts[name] = counts.get(name, 0) + 1
    lines = [
        f"{name} ({n} file{'' if n == 1 else 's'})" if name.endswith("/") else name
        for name, n in sorted(counts.items())
    ]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... and {len(lines) - max_lines} more entries"]
    return "\n".join(lines)


def head(worktree: Path) -> str:
    """The commit checked out in `worktree`: a slot's is asked of its cache's reader, by the per-worktree
    ref `worktrees/<slot>/HEAD` (the file `rev-parse HEAD` would read there)."""
    cache = _OWNED.get(worktree)
    if cache is None or worktree == cache.git_dir:
        return git(["rev-parse", "HEAD"], cwd=worktree).strip()
    sha = cache.resolve(f"worktrees/{worktree.name}/HEAD")
    if sha is None:
        raise GitError(["rev-parse", "HEAD"], f"{worktree}: HEAD names no commit")
    return sha


def diff_stat(worktree: Path, base_sha: str) -> str:
    return git(["diff", "--stat", base_sha, "HEAD"], cwd=worktree).strip()


PUSH = ["push", "-q", "--force", "--no-verify", "--no-follow-tags", "--no-recurse-submodules"]


def push(worktree: Path, branch: str, run_id: str, named_branch: str | None = None) -> None:
    """Force-push HEAD to `branch` of the remote, if the run owns it (`check_own_branch`); no tags."""
    check_own_branch(branch, run_id, named_branch)
    git([*PUSH, "origin", f"HEAD:refs/heads/{branch}"], cwd=worktree)


def merge(
    cache: RepoCache,
    branch: str,
    start_sha: str,
    base_ref: str,
    candidates: list[tuple[str, str]],
    run_id: str,
    named_branch: str | None = None,
    candidate: bool = False,
) -> MergeOutcome:
    """Merge candidate task branches, (key, branch) in order, into `branch` and push it (if it is the
    run's own: the integration branch its task set names, `named_branch`, or an `otto-farm/<run>/…` one).

    It starts from the remote `branch` when that already descends from `start_sha` (a redelivered
    callback after its push: git then finds the work merged and pushes the same head), else from
    `start_sha`. A gate `candidate` starts from `start_sha` always and notes the commit each merge
    makes (`chain`): the gate checks its prefixes, and the candidate branch is the farm's scratch.
    """
    remote = None if candidate else remote_heads(cache.repo).get(branch)
    cache.fetch([base_ref, *(b for _, b in candidates), *([branch] if remote else [])])
    start = (
        remote
        if remote and succeeds(["merge-base", "--is-ancestor", start_sha, remote], cache.git_dir)
        else start_sha
    )
    outcome = MergeOutcome(sha=start)
    with cache.slot(start) as wt:
        reset(wt, branch, start)
        for key, task_branch in candidates:
            proc = _run(
                [
                    "merge",
                    "-q",
                    "--no-ff",
                    "--no-edit",
                    "-m",
                    f"otto-farm: merge {key}",
                    f"refs/remotes/origin/{task_branch}",
                ],
                wt,
            )
            if proc.returncode == 0:
                outcome.merged.append(key)
                if candidate:
                    outcome.chain.append((key, head(wt)))
                continue
            files = git(["diff", "--name-only", "--diff-filter=U"], cwd=wt).split()
            git(["merge", "--abort"], cwd=wt, check=False)
            git(["reset", "-q", "--hard"], cwd=wt)
            outcome.conflicts[key] = files or [(proc.stdout + proc.stderr).strip()[-300:]]
        outcome.sha = head(wt)
        push(wt, branch, run_id, named_branch)
    return outcome


def push_sha(cache: RepoCache, sha: str, branch: str, run_id: str, named_branch: str | None = None) -> None:
    """Force-push commit `sha` of the cache to `branch` of the remote, if the run owns it: the gate moves
    the integration branch to a candidate that passed."""
    check_own_branch(branch, run_id, named_branch)
    git([*PUSH, "origin", f"{sha}:refs/heads/{branch}"], cwd=cache.git_dir)
