"""`otto-farm demo`: make the textkit demo repository and run the quickstart task set on it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from otto_farm import gitops, taskset
from otto_farm.cli.common import Workers, console, exits_cleanly
from otto_farm.cli.submit import run as submit_run
from otto_farm.errors import InputError
from otto_farm.models import AgentConfig
from otto_farm.resources import data_dir


def examples_dir() -> Path:
    """tasks/examples from the source tree, or its copy inside an installed wheel."""
    return data_dir("tasks", "examples/quickstart.yaml") / "examples"


def make_demo_repo(target: Path) -> Path:
    """A fresh git repository with the textkit starting point committed on `main`."""
    if target.exists() and any(target.iterdir()):
        raise InputError(str(target), "DIR", "exists and is not empty")
    shutil.copytree(examples_dir() / "quickstart-repo", target, dirs_exist_ok=True)
    gitops.git(["init", "-q", "-b", "main"], cwd=target)
    gitops.git(["add", "-A"], cwd=target)
    gitops.git(["commit", "-q", "-m", "textkit: starting point"], cwd=target)
    return target


@exits_cleanly
def demo(
    directory: Annotated[
        Path | None, typer.Argument(metavar="[DIR]", help="Where to make the demo repo.")
    ] = None,
    workers: Workers = 2,
    agent: Annotated[
        str,
        typer.Option(help="`command`: the scripted stand-in, no key; `anthropic`: Claude does the tasks."),
    ] = "command",
) -> None:
    """Make a small demo repository and run tasks/examples/quickstart.yaml on it."""
    if agent not in ("command", "anthropic"):
        raise InputError("--agent", "", f"unknown agent {agent!r}: use command or anthropic")
    if agent == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise InputError(
            "--agent anthropic",
            "",
            "needs ANTHROPIC_API_KEY set (the workers' agent calls the Anthropic API)",
        )
    repo = make_demo_repo(directory or Path(tempfile.mkdtemp(prefix="otto-farm-demo-")))
    console.print(f"demo repository: {repo}")
    loaded = taskset.load(examples_dir() / "quickstart.yaml", repo=str(repo))
    if agent == "anthropic":
        # The same tasks, done by Claude through the editor and bash tools, with a second attempt each.
        ts = loaded.taskset.model_copy(update={"agent": AgentConfig(provider="anthropic"), "max_attempts": 2})
        loaded = dataclasses.replace(loaded, taskset=ts)
    submit_run(loaded, wait=True, workers=workers)
