"""Claude's client-side tools in a worktree: the editor, bash, and the walls around the root."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import pytest
from anthropic.types import ToolUnionParam

from otto_farm.agents.tools import TOOL_DEFINITIONS, ToolError, Workspace

from conftest import gone_soon, unsandboxed

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "wt"
    root.mkdir()
    (root / ".git").write_text("gitdir: /somewhere/else/.git/worktrees/wt\n")
    return Workspace(root=root, env={"PATH": os.environ["PATH"]}, sandbox=unsandboxed(root))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the worktree holding a file the model must never see or touch."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text("secret\n")
    return d


def edit(ws: Workspace, command: str, path: str, **params: object) -> str:
    return ws.run("str_replace_based_edit_tool", {"command": command, "path": path, **params})


def _literal(hint: object) -> str | None:
    """The one value of a TypedDict field typed `Required[Literal["x"]]`, or None for any other type."""
    while get_origin(hint) is not Literal:
        if not get_args(hint):
            return None
        hint = get_args(hint)[0]
    values = get_args(hint)
    return str(values[0]) if len(values) == 1 else None


def test_tool_definitions_are_client_tools_the_sdk_knows() -> None:
    """Each definition is one of the SDK's own client tool types (its `type` and `name` literals, no
    other field), and the workspace answers to those names. A copy of the list could not tell a typo."""
    known = {}
    for param in get_args(ToolUnionParam):
        hints = get_type_hints(param, include_extras=True)
        if (kind := _literal(hints.get("type"))) and (name := _literal(hints.get("name"))):
            known[kind] = (name, set(hints))
    for tool in TOOL_DEFINITIONS:
        name, fields = known[tool["type"]]
        assert tool["name"] == name and set(tool) <= fields, tool
    assert [t["name"] for t in TOOL_DEFINITIONS] == ["bash", "str_replace_based_edit_tool"]
    ws = Workspace(root=Path("."), env={}, sandbox=unsandboxed(Path(".")))
    with pytest.raises(ToolError, match="unknown tool"):
        ws.run("nope", {})
    for tool in TOOL_DEFINITIONS:  # known by name: an empty input is refused as incomplete, not unknown
        with pytest.raises(ToolError, match="is required"):
            ws.run(tool["name"], {})


def test_view_file_numbered_and_range(ws: Workspace) -> None:
    (ws.root / "a.txt").write_text("one\ntwo\nthree\nfour\n")
    assert edit(ws, "view", "a.txt") == "     1\tone\n     2\ttwo\n     3\tthree\n     4\tfour"
    assert edit(ws, "view", "a.txt", view_range=[2, 3]) == "     2\ttwo\n     3\tthree"
    assert edit(ws, "view", "a.txt", view_range=[3, -1]) == "     3\tthree\n     4\tfour"
    with pytest.raises(ToolError, match="4 lines"):
        edit(ws, "view", "a.txt", view_range=[5, -1])


def test_view_caps_output_keeping_the_start(ws: Workspace) -> None:
    ws.output_chars = 100
    (ws.root / "big.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    out = edit(ws, "view", "big.txt")
    assert out.startswith("     1\tline 0\n")
    assert "truncated" in out and len(out) < 200


def test_view_directory_two_levels_hidden_skipped(ws: Workspace) -> None:
    (ws.root / "src" / "pkg" / "deep").mkdir(parents=True)
    (ws.root / "src" / "pkg" / "deep" / "too_deep.py").write_text("")
    (ws.root / "src" / "main.py").write_text("")
    (ws.root / "src" / ".cache").mkdir()
    (ws.root / ".hidden").write_text("")
    (ws.root / "README.md").write_text("")
    out = edit(ws, "view", ".")
    assert out.splitlines()[1:] == ["README.md", "src/", "src/main.py", "src/pkg/"]


def test_create_in_new_subdir_and_overwrite(ws: Workspace) -> None:
    assert "Created" in edit(ws, "create", "new/dir/f.py", file_text="x = 1\n")
    assert (ws.root / "new" / "dir" / "f.py").read_text() == "x = 1\n"
    edit(ws, "create", "new/dir/f.py", file_text="x = 2\n")
    assert (ws.root / "new" / "dir" / "f.py").read_text() == "x = 2\n"


def test_str_replace_unique_missing_duplicated(ws: Workspace) -> None:
    f = ws.root / "m.py"
    f.write_text("a = 1\nb = 2\nb = 2\n")
    edit(ws, "str_replace", "m.py", old_str="a = 1", new_str="a = 10")
    assert f.read_text() == "a = 10\nb = 2\nb = 2\n"
    with pytest.raises(ToolError, match="not found"):
        edit(ws, "str_replace", "m.py", old_str="c = 3", new_str="")
    with pytest.raises(ToolError, match="appears 2 times"):
        edit(ws, "str_replace", "m.py", old_str="b = 2", new_str="")
    edit(ws, "str_replace", "m.py", old_str="b = 2\nb = 2\n")  # new_str defaults to ""
    assert f.read_text() == "a = 10\n"


def test_insert_at_top_and_end(ws: Workspace) -> None:
    f = ws.root / "i.txt"
    f.write_text("b\nc\n")
    edit(ws, "insert", "i.txt", insert_line=0, insert_text="a\n")
    edit(ws, "insert", "i.txt", insert_line=3, new_str="d")  # older versions name the text new_str
    assert f.read_text() == "a\nb\nc\nd\n"
    with pytest.raises(ToolError, match="insert_text is required"):
        edit(ws, "insert", "i.txt", insert_line=0)
    with pytest.raises(ToolError, match="0 to 4"):
        edit(ws, "insert", "i.txt", insert_line=9, insert_text="x")


def test_binary_file_and_unknown_command_refused(ws: Workspace) -> None:
    (ws.root / "b.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    with pytest.raises(ToolError, match="binary"):
        edit(ws, "view", "b.bin")
    with pytest.raises(ToolError, match="unknown command"):
        edit(ws, "undo_edit", "b.bin")
    with pytest.raises(ToolError, match="unknown tool"):
        ws.run("computer", {})


def test_paths_leaving_the_root_refused(ws: Workspace) -> None:
    for path in ["../../etc/passwd", "/etc/passwd", "sub/../../x"]:
        with pytest.raises(ToolError, match=re.escape(path)):
            edit(ws, "view", path)
    with pytest.raises(ToolError, match="outside"):
        edit(ws, "create", "../escape.txt", file_text="x")
    assert not (ws.root.parent / "escape.txt").exists()


def test_absolute_path_inside_root_accepted(ws: Workspace) -> None:
    edit(ws, "create", str(ws.root / "abs.txt"), file_text="hi\n")
    assert edit(ws, "view", str(ws.root / "abs.txt")) == "     1\thi"


def test_symlink_to_outside_file_refused(ws: Workspace, outside: Path) -> None:
    (ws.root / "link").symlink_to(outside / "secret.txt")
    with pytest.raises(ToolError, match="outside"):
        edit(ws, "view", "link")
    with pytest.raises(ToolError, match="outside"):
        edit(ws, "create", "link", file_text="pwned\n")
    with pytest.raises(ToolError, match="outside"):
        edit(ws, "str_replace", "link", old_str="secret", new_str="pwned")
    assert (outside / "secret.txt").read_text() == "secret\n"


def test_symlinked_dir_to_outside_refused(ws: Workspace, outside: Path) -> None:
    (ws.root / "d").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ToolError, match="outside"):
        edit(ws, "view", "d/secret.txt")
    with pytest.raises(ToolError, match="outside"):
        edit(ws, "create", "d/new.txt", file_text="x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert "d/secret.txt" not in edit(ws, "view", ".")  # not listed through the link either


def test_dangling_symlink_to_outside_refused(ws: Workspace, outside: Path) -> None:
    (ws.root / "dangling").symlink_to(outside / "not-yet.txt")
    with pytest.raises(ToolError, match="outside"):
        edit(ws, "create", "dangling", file_text="x")
    assert not (outside / "not-yet.txt").exists()


def test_symlink_inside_root_allowed(ws: Workspace) -> None:
    (ws.root / "real.txt").write_text("ok\n")
    (ws.root / "alias").symlink_to("real.txt")
    assert edit(ws, "view", "alias") == "     1\tok"


def test_git_metadata_refused(ws: Workspace) -> None:
    for path in [".git", ".git/config", "sub/../.git"]:
        with pytest.raises(ToolError, match="git"):
            edit(ws, "create", path, file_text="x")
    (ws.root / "g").symlink_to(".git")
    with pytest.raises(ToolError, match="git"):
        edit(ws, "view", "g")
    assert (ws.root / ".git").read_text().startswith("gitdir:")


def test_bash_runs_in_root_and_reports_exit_code(ws: Workspace) -> None:
    assert ws.run("bash", {"command": "pwd"}) == f"{ws.root}\n"
    assert ws.run("bash", {"command": "echo oops >&2; exit 3"}) == "oops\n[exit code 3]"
    assert ws.run("bash", {"command": "printf partial; exit 1"}) == "partial\n[exit code 1]"
    assert ws.run("bash", {"command": "true"}) == "(no output)"
    assert "restarted" in ws.run("bash", {"restart": True})
    with pytest.raises(ToolError, match="command is required"):
        ws.run("bash", {"command": "  "})


def test_bash_timeout_kills_background_children(ws: Workspace) -> None:
    ws.command_timeout_s = 0.5
    with pytest.raises(ToolError, match="timed out after 0.5 s") as err:
        ws.run("bash", {"command": "sleep 30 & echo child=$!; sleep 5"})
    match = re.search(r"child=(\d+)", str(err.value))
    assert match, str(err.value)
    assert gone_soon(int(match.group(1)))


def test_bash_caps_output(ws: Workspace) -> None:
    ws.output_chars = 1000
    out = ws.run("bash", {"command": "seq 1 100000"})
    assert len(out) < 1100 and out.endswith("100000\n")


def test_bash_sees_only_the_given_env(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTTO_TEST_API_TOKEN", "s3cret")
    ws.env = {"PATH": os.environ["PATH"], "FOO": "bar"}
    assert ws.run("bash", {"command": 'echo "$FOO [$OTTO_TEST_API_TOKEN]"'}) == "bar []\n"
