"""Git operations on real repositories: commits that find nothing to commit, slots that share branches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from otto_farm import gitops
from otto_farm.errors import GitError


def test_commit_all_tells_nothing_to_commit_from_a_change(make_repo, tmp_path):
    repo = make_repo({"README.md": "demo\n"})
    assert not gitops.commit_all(repo, "nothing")
    (repo / ".venv").mkdir()
    (repo / ".venv" / "bin").write_text("made by setup\n")
    assert not gitops.commit_all(repo, "only an excluded file", exclude=[".venv"])
    (repo / "README.md").write_text("changed\n")
    assert gitops.commit_all(repo, "a change", exclude=[".venv"])
    assert gitops.git(["show", "--name-only", "--format=", "HEAD"], cwd=repo).split() == ["README.md"]
    (repo / "new.txt").write_text("new\n")
    assert gitops.commit_all(repo, "an untracked file", exclude=[".venv"])


def test_a_slot_takes_a_branch_another_slot_still_has_checked_out(make_repo, tmp_path):
    """Slots keep their last branch checked out; a retry of the task resets the same branch elsewhere."""
    repo = make_repo({"README.md": "demo\n"})
    cache = gitops.RepoCache(tmp_path / "work", str(repo))
    cache.fetch(["main"])
    base = gitops.git(["rev-parse", "main"], cwd=repo).strip()
    assert cache.has_commit(base) and cache.has_commit(base)  # the second answer is remembered
    with cache.slot(base) as first:
        gitops.reset(first, "otto-farm/r/a", base)
        (first / "a.txt").write_text("first run\n")
        assert gitops.commit_all(first, "first run")
        with cache.slot(base) as second:
            assert second != first
            gitops.reset(second, "otto-farm/r/a", base)
            assert not (second / "a.txt").exists()
            (second / "a.txt").write_text("second run\n")
            assert gitops.commit_all(second, "second run")
            gitops.push(second, "otto-farm/r/a", "r")
    assert gitops.git(["show", "otto-farm/r/a:a.txt"], cwd=repo) == "second run\n"
    with cache.slot(base) as again:  # the first slot, on a branch moved under it: reset still cleans it
        gitops.reset(again, "otto-farm/r/b", base)
        assert gitops.head(again) == base and not (again / "a.txt").exists()
    assert not cache.has_commit("0" * 40)
    shutil.rmtree(cache.root)  # a work dir wiped under a running worker: the cache starts over
    assert not cache.has_commit(base)
    cache.fetch(["main"])
    assert cache.has_commit(base)


def test_commit_all_raises_when_git_cannot_commit(make_repo):
    repo = make_repo({"README.md": "demo\n"})
    (repo / "README.md").write_text("changed\n")
    (Path(repo) / ".git" / "index.lock").write_text("")  # another git process holds the index
    with pytest.raises(GitError, match="index.lock"):
        gitops.commit_all(repo, "blocked")


# An agent runs with write access to its worktree, and (to commit on its own) to the cache's git dir:
# whatever it leaves there must not make the farm's own git commands run a program of its choosing.
HOOKS = ("post-checkout", "pre-commit", "post-commit", "post-merge", "pre-push", "reference-transaction")


@pytest.fixture
def cache_at_base(make_repo, tmp_path):
    """A cache of a fresh repository, its base commit, and a program that notes each run in a marker."""
    repo = make_repo({"README.md": "demo\n"})
    cache = gitops.RepoCache(tmp_path / "work", str(repo))
    cache.fetch(["main"])
    evil = tmp_path / "evil.sh"
    evil.write_text(f'#!/bin/sh\necho "$0 $*" >> {tmp_path / "ran"}\ncat\n')
    evil.chmod(0o755)
    return repo, cache, gitops.git(["rev-parse", "main"], cwd=repo).strip(), evil


def ran(tmp_path: Path) -> str:
    marker = tmp_path / "ran"
    return marker.read_text() if marker.exists() else ""


def test_hooks_planted_in_the_cache_never_run(cache_at_base, tmp_path):
    """Attack: an agent writes executable hooks into the shared cache.git/hooks, for the next reset,
    commit, push or merge of any job on the worker to run with the worker's full environment."""
    repo, cache, base, _ = cache_at_base
    for name in HOOKS:
        hook = cache.git_dir / "hooks" / name
        hook.write_text(f"#!/bin/sh\necho {name} >> {tmp_path / 'ran'}\n")
        hook.chmod(0o755)
    with cache.slot(base) as wt:
        gitops.reset(wt, "otto-farm/r/a", base)
        (wt / "a.txt").write_text("a\n")
        assert gitops.commit_all(wt, "a")
        gitops.push(wt, "otto-farm/r/a", "r")
    outcome = gitops.merge(cache, "otto-farm/r/integration", base, "main", [("a", "otto-farm/r/a")], "r")
    assert outcome.merged == ["a"]
    assert gitops.git(["show", "otto-farm/r/integration:a.txt"], cwd=repo) == "a\n"
    assert ran(tmp_path) == ""


def plant_filter(where: str, cache: gitops.RepoCache, wt: Path, evil: Path, tmp_path: Path) -> None:
    driver = f'[filter "ev"]\n\tclean = {evil}\n\tsmudge = {evil}\n'
    admin = cache.git_dir / "worktrees" / wt.name
    if where == "cache config":
        with open(cache.git_dir / "config", "a") as fh:
            fh.write(driver)
    elif where == "config.worktree":
        with open(cache.git_dir / "config", "a") as fh:
            fh.write("[extensions]\n\tworktreeConfig = true\n")
        (admin / "config.worktree").write_text("[core]\n\tbare = false\n" + driver)
    else:  # a git dir of the agent's making: a copy of the cache, with the driver in its config
        copy = tmp_path / "copy.git"
        shutil.copytree(cache.git_dir, copy)
        with open(copy / "config", "a") as fh:
            fh.write(driver)
        if where == "worktree .git file":
            (wt / ".git").write_text(f"gitdir: {copy / 'worktrees' / wt.name}\n")
        else:
            (admin / "commondir").write_text(f"{copy}\n")


@pytest.mark.parametrize("where", ["cache config", "config.worktree", "worktree .git file", "commondir"])
def test_a_filter_driver_the_agent_configures_never_runs(cache_at_base, tmp_path, where):
    """Attack: an agent names a filter driver in a .gitattributes of its tree and defines it in a git
    config it can write (the cache's config, its worktree's config.worktree, or a git dir it points
    the worktree at), for the farm's `add`/`commit`/`checkout` to run it."""
    repo, cache, base, evil = cache_at_base
    with cache.slot(base) as wt:
        gitops.reset(wt, "otto-farm/r/a", base)
        plant_filter(where, cache, wt, evil, tmp_path)
        (wt / ".gitattributes").write_text("* filter=ev\n")
        (wt / "a.txt").write_text("a\n")
        assert gitops.commit_all(wt, "a")
        gitops.push(wt, "otto-farm/r/a", "r")
        gitops.reset(wt, "otto-farm/r/b", base)
        gitops.reset(wt, "otto-farm/r/a", gitops.git(["rev-parse", "otto-farm/r/a"], cwd=repo).strip())
        assert (wt / "a.txt").read_text() == "a\n"
    assert ran(tmp_path) == ""


def test_a_commondir_planted_in_the_cache_is_not_followed(cache_at_base, tmp_path):
    """Attack: an agent writes `cache.git/commondir`, naming a git dir of its making whose config git
    would read instead of the farm's: its `remote.origin.uploadpack` runs on the next fetch."""
    repo, cache, _, evil = cache_at_base
    copy = tmp_path / "copy.git"
    shutil.copytree(cache.git_dir, copy)
    with open(copy / "config", "a") as fh:
        fh.write(f'[remote "origin"]\n\tuploadpack = {evil}\n')
    (cache.git_dir / "commondir").write_text(f"{copy}\n")
    (repo / "b.txt").write_text("b\n")
    gitops.git(["add", "-A"], cwd=repo)
    gitops.git(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "b"], cwd=repo)
    cache.fetch(["main"])
    assert cache.has_commit(gitops.git(["rev-parse", "main"], cwd=repo).strip())
    assert ran(tmp_path) == ""


def test_an_fsmonitor_the_agent_configures_never_runs(cache_at_base, tmp_path):
    """Attack: an agent sets core.fsmonitor in the cache's config to a program of its own, which git
    would ask about changed files on every status, add and commit in any slot."""
    _, cache, base, evil = cache_at_base
    with open(cache.git_dir / "config", "a") as fh:
        fh.write(f"[core]\n\tfsmonitor = {evil}\n")
    with cache.slot(base) as wt:
        gitops.reset(wt, "otto-farm/r/a", base)
        (wt / "a.txt").write_text("a\n")
        assert gitops.untracked(wt) == ["a.txt"]
        assert gitops.commit_all(wt, "a")
        assert gitops.diff_stat(wt, base)
    assert ran(tmp_path) == ""


def test_the_farm_pushes_only_its_own_branches(cache_at_base):
    """Attack: a wrong branch name reaches a push (a tampered run record, a task set naming `main` as
    its integration branch after the check at load, a bug): the farm would force-push over the user's
    branch. Only the run's `otto-farm/<run>/…` branches and the integration branch it names go out."""
    repo, cache, base, _ = cache_at_base
    with cache.slot(base) as wt:
        gitops.reset(wt, "otto-farm/r/a", base)
        (wt / "a.txt").write_text("a\n")
        assert gitops.commit_all(wt, "a")
        for branch in ("main", "otto-farm/other/a", "otto-farm/r", "feature/x"):
            with pytest.raises(GitError, match="not a branch of run r"):
                gitops.push(wt, branch, "r")
        gitops.push(wt, "feature/x", "r", named_branch="feature/x")
    with pytest.raises(GitError, match="not a branch of run r"):
        gitops.merge(cache, "main", base, "main", [], "r")
    assert gitops.git(["rev-parse", "main"], cwd=repo).strip() == base
    assert gitops.git(["show", "feature/x:a.txt"], cwd=repo) == "a\n"
    assert gitops.git(["tag"], cwd=repo) == ""
