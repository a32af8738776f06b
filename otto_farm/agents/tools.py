"""Claude's client-side tools (bash, the text editor), executed inside one task's git worktree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otto_farm import shell
from otto_farm.errors import OttoFarmError
from otto_farm.sandbox import Command, Sandbox

#: Sent as `tools=` to the Messages API; the newest versions anthropic 2.13 documents for each tool.
TOOL_DEFINITIONS: list[dict[str, Any]] = [
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
]


class ToolError(OttoFarmError):
    """A tool call that cannot be carried out; the message goes back to the model with is_error true."""


@dataclass
class Workspace:
    """A worktree the model may read, edit and run commands in, and nothing outside it."""

    root: Path
    env: dict[str, str]  # already scrubbed of secrets by the caller
    sandbox: Sandbox  # where bash runs
    command_timeout_s: float = 120
    output_chars: int = 30_000
    stop: shell.Stop | None = None  # ends a running command once the run is cancelled

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    def run(self, name: str, params: dict[str, Any]) -> str:
        """Execute the tool called `name` with the model's input."""
        if name == "bash":
            return self.bash(params)
        if name == "str_replace_based_edit_tool":
            return self.editor(params)
        raise ToolError(f"unknown tool {name!r}; the tools are bash and str_replace_based_edit_tool")

    def resolve(self, path: str) -> Path:
        """The real path of `path` (relative to the root, or absolute inside it); refuses leaving the root."""
        if not path or "\0" in path:
            raise ToolError(f"path {path!r} is empty or holds a NUL byte")
        # realpath follows every existing symlink, dangling ones too, and keeps a missing tail literal.
        real = Path(os.path.realpath(self.root / path))
        if not real.is_relative_to(self.root):
            raise ToolError(f"{path}: outside the worktree {self.root}")
        if ".git" in real.relative_to(self.root).parts:
            raise ToolError(f"{path}: git metadata is off limits")
        return real

    def editor(self, params: dict[str, Any]) -> str:
        """Claude's text editor: view, create, str_replace and insert."""
        path_arg = _text(params, "path")
        try:
            return self._edit(params.get("command"), self.resolve(path_arg), path_arg, params)
        except OSError as e:
            raise ToolError(f"{path_arg}: {e.strerror or e}") from None

    def _edit(self, command: object, path: Path, path_arg: str, params: dict[str, Any]) -> str:
        if command == "view":
            return self._view(path, path_arg, params.get("view_range"))
        if command == "create":
            if path.exists() and not path.is_file():
                raise ToolError(f"{path_arg}: exists and is not a regular file")
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, _text(params, "file_text"))
            return f"Created {path_arg}."
        if command == "str_replace":
            old, new = _text(params, "old_str"), _text(params, "new_str", "")
            if not old:
                raise ToolError("old_str must not be empty")
            content = _read(path, path_arg)
            count = content.count(old)
            if count != 1:
                found = "was not found" if count == 0 else f"appears {count} times; add context to be unique"
                raise ToolError(f"{path_arg}: old_str {found}")
            _write(path, content.replace(old, new, 1))
            return f"Edited {path_arg}: replaced 1 occurrence."
        if command == "insert":
            return self._insert(path, path_arg, params)
        raise ToolError(f"unknown command {command!r}; use view, create, str_replace or insert")

    def bash(self, params: dict[str, Any]) -> str:
        """Run one command in the worktree, each in a fresh process; no state carries over between calls."""
        if params.get("restart"):
            return "Tool restarted. Every command runs in a fresh shell in the worktree root anyway."
        command = params.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolError("command is required")
        res = self.sandbox.run(
            Command(
                command, self.command_timeout_s, self.env, max_output_chars=self.output_chars, stop=self.stop
            )
        )
        if res.timed_out:
            raise ToolError(f"command timed out after {self.command_timeout_s:g} s; output:\n{res.output}")
        output = res.output
        if res.exit_code != 0:
            output += ("\n" if output and not output.endswith("\n") else "") + f"[exit code {res.exit_code}]"
        return output or "(no output)"

    def _view(self, path: Path, path_arg: str, view_range: Any) -> str:
        if path.is_dir():
            entries = []
            for child in _children(path):
                entries.append(self._listed(child))
                # Listing a symlinked directory's contents could show names outside the worktree.
                if child.is_dir() and not child.is_symlink():
                    entries += [self._listed(p) for p in _children(child)]
            heading = f"Files and directories up to 2 levels deep in {path_arg}:\n"
            return self._cap(heading + "\n".join(entries))
        lines = _lines(_read(path, path_arg))
        start, end = 1, len(lines)
        if view_range is not None:
            if not (isinstance(view_range, list) and [type(n) for n in view_range] == [int, int]):
                raise ToolError("view_range must be [start, end]")
            start, end = view_range
            end = len(lines) if end == -1 else min(end, len(lines))
            if not 1 <= start <= len(lines) or end < start:
                raise ToolError(f"view_range {view_range} is invalid: {path_arg} has {len(lines)} lines")
        numbered = "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(start, end + 1))
        return self._cap(numbered or f"{path_arg} is empty")

    def _insert(self, path: Path, path_arg: str, params: dict[str, Any]) -> str:
        line = params.get("insert_line")
        # Older text editor versions name the inserted text new_str.
        text = _text({"insert_text": params.get("insert_text", params.get("new_str"))}, "insert_text")
        lines = _lines(_read(path, path_arg))
        if not isinstance(line, int) or not 0 <= line <= len(lines):
            raise ToolError(f"insert_line must be an integer from 0 to {len(lines)} (the file's line count)")
        lines[line:line] = _lines(text)
        _write(path, "".join(f"{ln}\n" for ln in lines))
        return f"Inserted {len(_lines(text))} line(s) after line {line} of {path_arg}."

    def _listed(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() + ("/" if path.is_dir() else "")

    def _cap(self, text: str) -> str:
        if len(text) <= self.output_chars:
            return text
        cut = len(text) - self.output_chars
        return text[: self.output_chars] + f"\n[... {cut} chars truncated; view a line range for the rest]"


def _children(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _text(params: dict[str, Any], key: str, default: str | None = None) -> str:
    value = params.get(key, default)
    if not isinstance(value, str):
        raise ToolError(f"{key} is required (a string)")
    return value


def _read(path: Path, path_arg: str) -> str:
    if not path.is_file():
        raise ToolError(f"{path_arg}: not a regular file" if path.exists() else f"{path_arg}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise ToolError(f"{path_arg}: binary or not UTF-8 text; use bash to inspect it")
    return text


def _write(path: Path, text: str) -> None:
    # Bytes, not text mode: no newline translation, so CRLF files keep their line endings.
    path.write_bytes(text.encode("utf-8"))
