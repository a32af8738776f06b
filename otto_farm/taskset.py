"""A task set file (YAML, or plain text with one prompt per line) → a validated TaskSet and its repo.

Every problem is one InputError naming the file and the field; nothing is written before it passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from otto_farm import gitops
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
    _check_tasks(ts, source)
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
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(str(path), "", f"YAML error{where}: {problem}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "", "expected a mapping with a 'tasks' list")
    return data


def _check_tasks(ts: TaskSet, source: str) -> None:
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


def _resolve_base(repo: str, base: str | None, source: str) -> tuple[str, str, dict[str, str]]:
    try:
        heads = gitops.remote_heads(repo)
        branch = base or gitops.remote_default_branch(repo)
    except GitError:
        raise InputError(source, "repo", f"{repo!r} is not a git repository") from None
    if branch is None:
        raise InputError(source, "base", f"repo {repo!r} has no current branch; set base")
    if branch not in heads:
        raise InputError(source, "base", f"branch {branch!r} not found in {repo!r}")
    return branch, heads[branch], heads
