"""Registers the commands; each lives in its own module, imported only when its command runs.

`otto-farm --help` lists every command from its docstring, read from the module's source: importing
them all would load Celery, Redis and the models, over a second, to print a page of text.
"""

from __future__ import annotations

import ast
import gc
import importlib
import importlib.util
from functools import cache
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

# command → the module under otto_farm.cli that defines a function of the command's name
COMMANDS = {
    "submit": "submit",
    "status": "status",
    "runs": "runs",
    "logs": "logs",
    "retry": "retry",
    "cancel": "cancel",
    "resume": "resume",
    "prune": "prune",
    "up": "up",
    "down": "up",
    "worker": "worker",
    "flower": "flower",
    "demo": "demo",
}


class LazyCommand(TyperCommand):
    """A command known by name and docstring until it runs (or shows its own help): then it is loaded."""

    def __init__(self, name: str, module: str) -> None:
        self.module = f"otto_farm.cli.{module}"
        super().__init__(name, help=_docstring(self.module, name))

    # Contexts and commands are typed Any: typer 0.29 has its own copy of click, earlier ones use click.
    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        # The context names the loaded command: click then parses, helps and invokes through it.
        return _load(self.module, str(self.name)).make_context(info_name, args, parent=parent, **extra)


class LazyGroup(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return LazyCommand(cmd_name, COMMANDS[cmd_name]) if cmd_name in COMMANDS else None


app = typer.Typer(
    name="otto-farm",
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"otto-farm {version('otto-farm')}")
        raise typer.Exit()


@app.callback()
def root(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Run many coding-agent tasks against one git repository, spread over Celery workers."""


@cache
def _load(module: str, name: str) -> Any:
    """The command as typer builds it from its function (a one-command app is that command)."""
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    one.command(name)(getattr(importlib.import_module(module), name))
    # What the imports made lives as long as the process: out of the collector's sight, a command that
    # builds many objects (`status` of a 10,000-task run: a fifth of its time) does not walk it again.
    gc.freeze()
    return typer.main.get_command(one)


def _docstring(module: str, name: str) -> str | None:
    """The docstring of `module`'s function `name`, read from its source without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_docstring(node)
    return None


def main() -> None:
    app()
