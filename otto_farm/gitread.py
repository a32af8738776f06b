"""The repository cache's object reader: names to shas over one persistent `git cat-file --batch-check`
(GitPython's) per cache and process, where `rev-parse` or `cat-file -e` would start a process a question."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from git import Git

from otto_farm.errors import GitError

# GitPython's words for an answer of `<name> missing` (or `ambiguous`); any other failure is the process's.
_NOT_FOUND = "could not be resolved"


class Reader:
    """GitPython's persistent `cat-file --batch-check` in one git dir, for the process that started it.

    It starts on first use with the options and environment its caller gives (every farm git command's:
    hooks off, the farm's git dirs and its own config, written back by `env()` just before), and again
    after a name it did not find (rare: a base not fetched yet) or if it died. It reads only objects
    and refs, which run no program, and sees refs and objects other processes write after it started
    (cat-file looks a name up afresh each question).
    """

    def __init__(self, git_dir: Path, options: Sequence[str], env: Callable[[], dict[str, str]]) -> None:
        self.git_dir, self._options, self._env = git_dir, list(options), env
        self.pid, self.inode = os.getpid(), _inode(git_dir)
        self._lock = threading.RLock()  # one question (or close) at a time: a worker may run jobs in threads
        self._git: Git | None = None

    def resolve(self, name: str) -> str | None:
        """The sha `name` stands for (`<sha>^{commit}`, `worktrees/<id>/HEAD`, a ref), or None."""
        if not name or "\n" in name:  # one question is one line
            return None
        with self._lock:
            for _ in range(2):  # once more if it died
                git = self._git or self._start()
                try:
                    sha: str | bytes = git.get_object_header(name)[0]  # bytes, whatever its hints say
                except ValueError as exc:
                    if _NOT_FOUND in str(exc):
                        # git may have said why on stderr, which GitPython pipes and never reads: a
                        # few hundred such answers would fill the pipe and block the reader for good.
                        # The next question starts a new one (a process, as every question once was).
                        self.close()
                        return None
                    failure = str(exc)  # no answer at all: the process died (or never started)
                except OSError as exc:  # its pipe broke under us
                    failure = str(exc)
                else:
                    return sha.decode() if isinstance(sha, bytes) else sha
                self.close()
        raise GitError(["cat-file", "--batch-check"], failure)

    def running_pid(self) -> int | None:
        """The pid of the cat-file process while one runs (for tests and `ps`)."""
        proc = self._git.cat_file_header if self._git else None
        return proc.proc.pid if proc is not None and proc.proc is not None else None

    def close(self) -> None:
        """End the cat-file process (GitPython's own clean-up: close its input, then terminate)."""
        if self.pid != os.getpid():  # a parent's: its process is the parent's, its lock may be held
            self._git = None
            return
        with self._lock:
            if self._git is not None:
                self._git.clear_cache()
            self._git = None

    def _start(self) -> Git:
        git = Git(self.git_dir)
        git.set_persistent_git_options(c=self._options)  # `-c k=v` before `cat-file`, as on every command
        git.update_environment(**self._env())
        self._git = git
        return git


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


_READERS: dict[Path, Reader] = {}  # least recently asked first
# A worker that served many repositories keeps a reader only for the ones it used last.
READERS_MAX = 8


def reader(git_dir: Path, options: Sequence[str], env: Callable[[], dict[str, str]]) -> Reader:
    """This process's reader of `git_dir`, a new one after a fork or for a git dir made anew (a work dir
    wiped and fetched again): a child inherits the parent's pipe, not the right to use it."""
    current = _READERS.pop(git_dir, None)
    if current is None or current.pid != os.getpid() or current.inode != _inode(git_dir):
        if current is not None:
            current.close()
        current = Reader(git_dir, options, env)
        while len(_READERS) >= READERS_MAX:
            _READERS.pop(next(iter(_READERS))).close()
    _READERS[git_dir] = current
    return current
