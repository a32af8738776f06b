"""A task set file (YAML, or plain text with one prompt per line) → a validated TaskSet and its repo.

Every problem is one InputError naming the file and the field; nothing is written before it passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from otto_farm import gitops, shell
from otto_farm.agents import AGENTS, presets
from otto_farm.errors import GitError, InputError
from otto_farm.models import TaskSet
from otto_farm.plan import find_cycle

PROBLEMS = {
    "extra_forbidden": "unknown field",
    "missing": "required field missing",
    "string_pattern_mismatch": "unsafe key: must match [a-z0-9][a-z0-9._-]{0,63}",
    "string_too_short": "must not be empty",
}
# A URL's userinfo (`user:password`, or a token alone: https://TOKEN@host/…), up to its last "@".
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s]*)@")


@dataclass(frozen=True)
class LoadedTaskSet:
    taskset: TaskSet
    source: Path
    repo: str  # absolute path or URL, as workers will reach it
    base: str
    base_sha: str


def load(path: Path, repo: str | None = None, agent_command: str | None = None) -> LoadedTaskSet:
    """Read, validate and resolve a task set.

    `repo` (from the command line) overrides the file's; `agent_command` (settings) is the agent's
    command where the set names none, which is how a plain .txt set gets an agent.
    """
    try:
        return _load(path, repo, agent_command)
    except InputError as exc:
        # The repo's URL may carry a password or token, and an error line goes to terminals and logs.
        raise InputError(exc.source, exc.field, masked(exc.problem)) from None


def masked(text: str) -> str:
    """`text` with each URL's password masked (`https://user:***@host`), or its user when that is a token."""

    def mask(m: re.Match[str]) -> str:
        user, colon, _ = m[2].partition(":")
        return f"{m[1]}{user}:***@" if colon else f"{m[1]}***@"

    return _USERINFO.sub(mask, text)


def _load(path: Path, repo: str | None, agent_command: str | None) -> LoadedTaskSet:
    source = str(path)
    if not path.is_file():
        raise InputError(source, "", "no such file")
    data = _parse(path)
    if repo is not None:
        data["repo"] = repo
    agent = data.get("agent", {})
    # A preset brings its own command line.
    commandless = isinstance(agent, dict) and not agent.get("command") and not agent.get("preset")
    if agent_command and commandless and agent.get("provider", "command") == "command":
        data["agent"] = {**agent, "command": agent_command}
    try:
        ts = TaskSet.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        problem = PROBLEMS.get(err["type"], err["msg"])
        if err["type"] == "string_pattern_mismatch":
            problem = f"{problem} (got {err['input']!r})"
        raise InputError(source, field or "(top level)", problem) from None
    _check_fields(ts, source)
    check_tasks(ts, source)
    # A path in the file is relative to the file; one from the command line, to the current directory.
    anchor = Path.cwd() if repo is not None else path.parent
    repo_url = ts.repo if gitops.is_url(ts.repo) else str((anchor / ts.repo).resolve())
    base, base_sha, heads = _resolve_base(repo_url, ts.base, source)
    if ts.integration_branch and ts.integration_branch in heads:
        # Merging onto someone's existing branch would rewrite it: the run owns its integration branch.
        raise InputError(source, "integration_branch", f"branch {ts.integration_branch!r} exists already")
    ts = ts.model_copy(update={"repo": repo_url, "base": base})
    return LoadedTaskSet(taskset=ts, source=path.resolve(), repo=repo_url, base=base, base_sha=base_sha)


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise InputError(str(path), "", f"not UTF-8 text (byte {exc.start})") from None
    if path.suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        return {"tasks": [{"key": f"t{i}", "prompt": p} for i, p in enumerate(prompts, 1)]}
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(str(path), "", f"YAML error{where}: {problem}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "", "expected a mapping with a 'tasks' list")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping, where YAML would keep the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: its keys may be given again, that is what it is for
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:
                pass  # an unhashable key: SafeLoader's own error follows
        return super().construct_mapping(node, deep)


def _check_fields(ts: TaskSet, source: str) -> None:
    """What the model's types let through and would cost a run: an empty verify passes every task
    unchecked, and a bad integration branch fails the first merge, after the agents ran."""
    if not ts.verify.strip():
        raise InputError(source, "verify", "must not be empty")
    if ts.gate.verify is not None and not ts.gate.verify.strip():
        raise InputError(source, "gate.verify", "must not be empty (null: the task set's verify)")
    name = ts.integration_branch
    if name is not None and not _is_branch_name(name):
        raise InputError(source, "integration_branch", f"not a valid git branch name: {name!r}")


def _is_branch_name(name: str) -> bool:
    """git's own rules for a new branch (which refuse a leading '-', so it cannot pass for an option).
    git prints the name it checked: any other (`@{-1}` is the previous branch) is not the name given."""
    return bool(name) and gitops.git(["check-ref-format", "--branch", name], check=False).strip() == name


def check_tasks(ts: TaskSet, source: str) -> None:
    """Keys unique, dependencies known and acyclic, each task's sandbox and agent usable.

    Also what the pilot's new tasks must pass, laid over the run's task set (`pilot._new_tasks`).
    """
    seen: set[str] = set()
    for i, task in enumerate(ts.tasks):
        if task.key in seen:
            raise InputError(source, f"tasks[{i}].key", f"duplicate key {task.key!r}")
        seen.add(task.key)
    for i, task in enumerate(ts.tasks):
        for dep in task.depends_on:
            if dep not in seen:
                raise InputError(source, f"tasks[{i}].depends_on", f"unknown task {dep!r}")
    if cycle := find_cycle(ts.dependencies()):
        raise InputError(source, "tasks.depends_on", "dependency cycle: " + " -> ".join(cycle))
    for i, task in enumerate(ts.tasks):
        if task.verify is not None and not task.verify.strip():  # null is the set's verify; "" none at all
            raise InputError(source, f"tasks[{i}].verify", "must not be empty (null: the task set's verify)")
        try:
            ts.sandbox_for(task.key)  # the set's sandbox with the task's own fields over it
        except ValidationError as exc:
            raise InputError(source, f"tasks[{i}].sandbox", exc.errors()[0]["msg"]) from None
        field = "agent" if task.agent is None else f"tasks[{i}].agent"
        agent = ts.agent_for(task.key)
        if agent.provider not in AGENTS:
            known = ", ".join(sorted(AGENTS))
            raise InputError(
                source, f"{field}.provider", f"unknown provider {agent.provider!r} (known: {known})"
            )
        if agent.preset is not None and agent.provider == "command":
            known_presets = presets.load_presets()
            if agent.preset not in known_presets:
                raise InputError(
                    source,
                    f"{field}.preset",
                    f"unknown preset {agent.preset!r} (known: {', '.join(sorted(known_presets))})",
                )
        if agent.provider == "command" and not agent.command and not agent.preset:
            raise InputError(
                source, f"{field}.command", "required for provider 'command' (or set OTTO_FARM_AGENT_COMMAND)"
            )


def _unreadable(repo: str, exc: GitError) -> str:
    """Why git could not list the repository's branches: a missing path, a folder that is no repository,
    or, for a URL, git's own word (host unknown, refused, not found, denied)."""
    if not gitops.is_url(repo):
        return (
            f"{repo!r}: no such directory" if not Path(repo).exists() else f"{repo!r} is not a git repository"
        )
    said = [line for line in exc.output.splitlines() if line.startswith("fatal:")]
    why = said[0].removeprefix("fatal:").strip() if said else shell.first_line(exc.output)
    return f"{repo!r} could not be read: {why}"


def _resolve_base(repo: str, base: str | None, source: str) -> tuple[str, str, dict[str, str]]:
    try:
        heads = gitops.remote_heads(repo)
        branch = base or gitops.remote_default_branch(repo)
    except GitError as exc:
        raise InputError(source, "repo", _unreadable(repo, exc)) from None
    if branch is None:
        raise InputError(source, "base", f"repo {repo!r} has no current branch; set base")
    if branch not in heads:
        raise InputError(source, "base", f"branch {branch!r} not found in {repo!r}")
    return branch, heads[branch], heads
