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
            gitops.push(second, "otto-farm/r/a")
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
