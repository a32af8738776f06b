"""The agent's prompt: its task plus what the run learned for it, each in its own section."""

from __future__ import annotations

from typing import Any

from otto_farm.gitops import git, layout
from otto_farm.models import RunRecord, TaskState
from otto_farm.prompt import build

from conftest import make_record


def a_record(learnings: list[str] | None = None, **state: Any) -> RunRecord:
    tasks = [
        {"key": "a", "prompt": "  Add a `slugify` function to textkit.  \n"},
        {"key": "b", "prompt": "Document slugify.", "verify": "make docs"},
    ]
    return make_record(tasks, {"a": TaskState(key="a", **state)}, learnings, verify="pytest -q")


def prompt_of(record: RunRecord, key: str, **kwargs: Any) -> str:
    return build(record.taskset, record.tasks[key], record.learnings, **kwargs)


def sections(prompt: str) -> dict[str, str]:
    """Section title → body; the text before the first title is under ''."""
    out: dict[str, str] = {}
    title = ""
    for block in prompt.split("\n## "):
        if out or block.startswith("## "):
            title, _, body = block.removeprefix("## ").partition("\n")
        else:
            body = block
        assert title not in out, f"section {title!r} twice"
        out[title] = body.strip()
    return out


def test_everything_in_its_own_section():
    record = a_record(
        learnings=["the package uses src/ layout", "run ruff before committing"],
        context=["textkit/core.py holds the helpers"],
        guidance="Your previous change did not merge: conflict in textkit/core.py.",
    )
    failure = "E   assert slugify('A B') == 'a-b'"
    prompt = prompt_of(record, "a", previous_failure=failure)
    parts = sections(prompt)
    assert list(parts) == [
        "",
        "Verify",
        "Learnings from earlier batches",
        "Context for this task",
        "Retry guidance",
        "Previous attempt failed",
    ]
    assert parts[""] == "Add a `slugify` function to textkit."
    assert "`pytest -q`" in parts["Verify"]
    assert (
        parts["Learnings from earlier batches"]
        == "- the package uses src/ layout\n- run ruff before committing"
    )
    assert parts["Context for this task"] == "- textkit/core.py holds the helpers"
    assert parts["Retry guidance"] == "Your previous change did not merge: conflict in textkit/core.py."
    assert parts["Previous attempt failed"].startswith(failure + "\n")
    assert "conflict" not in parts["Previous attempt failed"]
    assert failure not in parts["Retry guidance"]
    assert prompt.endswith("\n")


def test_empty_sections_are_omitted():
    prompt = prompt_of(a_record(), "a")
    assert list(sections(prompt)) == ["", "Verify"]
    assert prompt.count("##") == 1


def test_guidance_without_previous_failure_and_the_reverse():
    guided = sections(prompt_of(a_record(guidance="Try the other module."), "a"))
    assert "Retry guidance" in guided
    assert "Previous attempt failed" not in guided
    failed = sections(prompt_of(a_record(), "a", previous_failure="FAILED test_a"))
    assert "Retry guidance" not in failed
    assert failed["Previous attempt failed"].startswith("FAILED test_a")


def test_task_verify_overrides_the_sets():
    record = a_record()
    prompt = prompt_of(record, "b")
    assert sections(prompt)[""] == "Document slugify."
    assert "`make docs`" in prompt
    assert "pytest -q" not in prompt
    assert "slugify` function" not in prompt  # only its own task


def test_repository_layout_has_its_own_section(make_repo):
    repo = make_repo({"README.md": "x", "src/a.py": "", "src/b/c.py": "", "tests/test_a.py": ""})
    tree = layout(repo, git(["rev-parse", "HEAD"], cwd=repo).strip())
    assert tree.splitlines() == ["README.md", "src/ (2 files)", "tests/ (1 file)"]
    assert "## Repository layout\nREADME.md\nsrc/ (2 files)" in prompt_of(a_record(), "a", layout=tree)
