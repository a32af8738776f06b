"""The agent's prompt: its task plus what the run learned for it, each in its own section."""

from __future__ import annotations

from typing import Any

from otto_farm.models import RunRecord, TaskSet, TaskState
from otto_farm.prompt import build


def make_record(learnings: list[str] | None = None, **state: Any) -> RunRecord:
    ts = TaskSet.model_validate(
        {
            "verify": "pytest -q",
            "agent": {"command": "true"},
            "tasks": [
                {"key": "a", "prompt": "  Add a `slugify` function to textkit.  \n"},
                {"key": "b", "prompt": "Document slugify.", "verify": "make docs"},
            ],
        }
    )
    return RunRecord(
        run_id="r1",
        source="/sets/tasks.yaml",
        taskset_dir="/sets",
        taskset=ts,
        repo="/repo",
        base="main",
        base_sha="0" * 40,
        integration_branch="otto-farm/r1/integration",
        tasks={"a": TaskState(key="a", **state), "b": TaskState(key="b")},
        learnings=learnings or [],
    )


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
    record = make_record(
        learnings=["the package uses src/ layout", "run ruff before committing"],
        context=["textkit/core.py holds the helpers"],
        guidance="Your previous change did not merge: conflict in textkit/core.py.",
    )
    failure = "E   assert slugify('A B') == 'a-b'"
    prompt = build(record, "a", previous_failure=failure)
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
    prompt = build(make_record(), "a")
    assert list(sections(prompt)) == ["", "Verify"]
    assert prompt.count("##") == 1


def test_guidance_without_previous_failure_and_the_reverse():
    guided = sections(build(make_record(guidance="Try the other module."), "a"))
    assert "Retry guidance" in guided
    assert "Previous attempt failed" not in guided
    failed = sections(build(make_record(), "a", previous_failure="FAILED test_a"))
    assert "Retry guidance" not in failed
    assert failed["Previous attempt failed"].startswith("FAILED test_a")


def test_task_verify_overrides_the_sets():
    record = make_record()
    prompt = build(record, "b")
    assert sections(prompt)[""] == "Document slugify."
    assert "`make docs`" in prompt
    assert "pytest -q" not in prompt
    assert "slugify` function" not in prompt  # only its own task
