"""The anthropic agent's tool-use loop, driving the real SDK against the scripted Messages-API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from otto_farm import keys
from otto_farm.agents import anthropic_agent
from otto_farm.agents.anthropic_agent import AnthropicAgent
from otto_farm.meter import SERVER_RETRIES
from otto_farm.models import RunStatus, TaskStatus
from otto_farm.scripted_server import ScriptedReply, fingerprint
from otto_farm.store import LOG_TTL_S

from conftest import anthropic_request

KEY = "sk-ant-test-SECRET-0123456789"


def edit(command: str, **params) -> ScriptedReply:
    return ScriptedReply(tool_name="str_replace_based_edit_tool", tool_input={"command": command, **params})


def bash(command: str) -> ScriptedReply:
    return ScriptedReply(tool_name="bash", tool_input={"command": command})


DONE = ScriptedReply(text="Done: greeting added.")


@pytest.fixture
def api(pilot_server, monkeypatch):
    """This process's SDK pointed at the scripted server, with a key that must never leak."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", pilot_server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    return pilot_server


def run(agent: AnthropicAgent, repo: Path, failure: str | None = None, **cfg) -> object:
    return agent.run(anthropic_request(repo, "Add a greeting module.", failure, **cfg))


def test_multi_turn_loop_views_edits_creates_and_runs(api, make_repo):
    repo = make_repo({"README.md": "hello\n"})
    api.script(
        bash("ls"),
        edit("view", path="README.md"),
        edit("str_replace", path="README.md", old_str="hello", new_str="hello, world"),
        edit("create", path="greet.py", file_text="def greet():\n    return 'hi'\n"),
        bash("python -c 'import greet; print(greet.greet())'"),
        DONE,
    )
    outcome = run(AnthropicAgent(), repo)
    assert (
        outcome.ok and outcome.stop_reason == "end_turn" and outcome.final_message == "Done: greeting added."
    )
    assert (repo / "README.md").read_text() == "hello, world\n"
    assert (repo / "greet.py").exists()
    assert (
        outcome.usage.input_tokens == 60 and outcome.usage.output_tokens == 60 and outcome.usage.cost_usd > 0
    )
    requests = [r.body for r in api.requests]
    assert len(requests) == 6
    # Each tool's result went back to the model in the next request.
    results = [
        m["content"][0]
        for m in requests[-1]["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
    ]
    assert (
        "README.md" in results[0]["content"]
        and "hello" in results[1]["content"]
        and "hi" in results[4]["content"]
    )
    assert requests[0]["system"][0]["cache_control"] == {"type": "ephemeral"}  # prompt caching
    assert {t["name"] for t in requests[0]["tools"]} == {"bash", "str_replace_based_edit_tool"}
    assert [e["tool"] for e in outcome.transcript if e["role"] == "tool"] == [
        "bash",
        "str_replace_based_edit_tool",
        "str_replace_based_edit_tool",
        "str_replace_based_edit_tool",
        "bash",
    ]


def test_path_escapes_are_tool_errors_and_change_nothing_outside(api, make_repo, tmp_path):
    repo = make_repo()
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    (repo / "link").symlink_to(outside)
    api.script(
        edit("view", path="../../etc/passwd"),
        edit("create", path="link", file_text="overwritten\n"),
        edit("str_replace", path=str(outside), old_str="untouched", new_str="changed"),
        DONE,
    )
    outcome = run(AnthropicAgent(), repo)
    assert outcome.ok
    errors = [e for e in outcome.transcript if e["role"] == "tool"]
    assert [e["is_error"] for e in errors] == [True, True, True]
    assert outside.read_text() == "untouched\n"
    last = api.requests[-1].body["messages"][-1]["content"][0]
    assert last["is_error"] is True


def test_bash_timeout_is_reported_to_the_model(api, make_repo, monkeypatch):
    monkeypatch.setattr(anthropic_agent, "COMMAND_TIMEOUT_S", 0.5)
    api.script(bash("sleep 10"), DONE)
    outcome = run(AnthropicAgent(), make_repo())
    tool = next(e for e in outcome.transcript if e["role"] == "tool")
    assert tool["is_error"] and "timed out" in tool["output"]


def test_overloaded_then_success(api, make_repo):
    api.script(ScriptedReply(status=529), DONE)
    outcome = run(AnthropicAgent(), make_repo())
    assert outcome.ok and len(api.requests) == 2


def test_api_that_keeps_failing_is_an_infrastructure_error_after_its_retries(api, make_repo):
    """A server error (not an overload) is tried SERVER_RETRIES more times, then ends the attempt."""
    api.script(*[ScriptedReply(status=500)] * (SERVER_RETRIES + 3))
    outcome = run(AnthropicAgent(), make_repo())
    assert not outcome.ok and outcome.infrastructure and "InternalServerError" in outcome.error
    assert len(api.requests) == SERVER_RETRIES + 1


def test_max_turns_and_token_budget_stop_the_loop(api, make_repo):
    api.script(*[bash("true")] * 3)
    assert run(AnthropicAgent(), make_repo(), max_turns=2).stop_reason == "max_turns"
    api.script(*[bash("true")] * 3)
    assert run(AnthropicAgent(), make_repo(name="r2"), max_total_tokens=30).stop_reason == "max_total_tokens"


def test_key_never_reaches_bash_or_the_transcript(api, make_repo):
    api.script(bash("env; echo $ANTHROPIC_API_KEY"), ScriptedReply(text=f"my key is {KEY}"))
    outcome = run(AnthropicAgent(), make_repo())
    tool = next(e for e in outcome.transcript if e["role"] == "tool")
    assert "ANTHROPIC_API_KEY" not in tool["output"] and KEY not in tool["output"]
    assert KEY not in str(outcome.transcript)
    # The key reached the wire in its auth header alone (the server records a fingerprint of it there).
    with_key = {fingerprint(KEY), fingerprint(f"Bearer {KEY}")}  # x-api-key, or the SDK's bearer form
    assert all({r.headers.get("x-api-key"), r.headers.get("authorization")} & with_key for r in api.requests)
    assert all(KEY not in json.dumps(r.body) + json.dumps(r.headers) for r in api.requests)


def test_second_attempt_continues_the_conversation_with_its_own_error(api, make_repo):
    agent = AnthropicAgent()
    repo = make_repo()
    api.script(DONE, DONE)
    run(agent, repo)
    run(agent, repo, failure="AssertionError: expected 3, got 4")
    messages = api.requests[-1].body["messages"]
    assert messages[0]["content"] == "Add a greeting module."
    assert messages[-1]["role"] == "user" and "expected 3, got 4" in messages[-1]["content"]
    assert len(messages) == 3


def test_anthropic_task_edits_verifies_and_merges(make_repo, write_taskset, run_taskset, pilot_server, store):
    repo = make_repo({"README.md": "hello\n"})
    pilot_server.script(
        edit("create", path="greet.py", file_text="def greet():\n    return 'hi'\n"),
        bash("python -c 'import greet'"),
        ScriptedReply(text="Added greet.py.", input_tokens=1000, output_tokens=100),
    )
    record = run_taskset(
        write_taskset(
            {
                "repo": str(repo),
                "verify": "python -c 'import greet; assert greet.greet() == \"hi\"'",
                "agent": {"provider": "anthropic", "model": "claude-sonnet-5-5"},
                "tasks": [{"key": "greet", "prompt": "Add greet.py with greet() returning 'hi'."}],
            }
        )
    )
    assert record.status is RunStatus.passed
    state = record.tasks["greet"]
    assert state.status is TaskStatus.passed and state.merged_sha
    attempt = state.last.attempts[0]
    assert attempt.final_message == "Added greet.py." and attempt.stop_reason == "end_turn"
    assert state.last.usage.input_tokens == 1020 and record.usage.cost_usd == pytest.approx(
        state.last.usage.cost_usd
    )
    assert record.usage.cost_usd > 0
    transcript = store.transcript(record.run_id, "greet", 1, 1)  # a log: its own key, with a TTL
    assert any(e.get("tool") == "bash" for e in transcript)
    assert 0 < store.redis.ttl(keys.transcripts_key(record.run_id)) <= LOG_TTL_S


def test_logs_show_the_transcript_of_an_attempt(
    make_repo, write_taskset, run_taskset, pilot_server, settings
):
    pilot_server.script(
        bash("echo hello-from-bash"), edit("view", path="../x"), ScriptedReply(text="All done.")
    )
    record = run_taskset(
        write_taskset(
            {
                "repo": str(make_repo()),
                "verify": "true",
                "agent": {"provider": "anthropic"},
                "tasks": [{"key": "t", "prompt": "say hello"}],
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "otto_farm", "logs", record.run_id, "t", "--attempt", "1"],
        env={**os.environ, **settings.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "[call bash]" in proc.stdout and "[tool bash] hello-from-bash" in proc.stdout
    assert (
        "[tool error str_replace_based_edit_tool]" in proc.stdout and "[assistant] All done." in proc.stdout
    )
    assert "agent stopped: end_turn" in proc.stdout


def test_cost_cap_stops_one_task(api, make_repo):
    api.script(*[ScriptedReply(tool_name="bash", tool_input={"command": "true"}, input_tokens=100_000)] * 3)
    outcome = run(AnthropicAgent(), make_repo(), max_cost_usd=0.3)  # each reply costs $0.20 at $2/MTok
    assert outcome.stop_reason == "max_cost" and len(api.requests) == 2


def test_run_budget_stops_dispatching_and_keeps_what_merged(
    make_repo, write_taskset, run_taskset, pilot_server
):
    repo = make_repo()
    pilot_server.script(
        edit("create", path="one.txt", file_text="1\n"),
        ScriptedReply(text="done", input_tokens=1_000_000),  # $2 at the default model's price
    )
    record = run_taskset(
        write_taskset(
            {
                "repo": str(repo),
                "verify": "true",
                "agent": {"provider": "anthropic"},
                "budget": {"max_cost_usd": 1.0},
                "tasks": [
                    {"key": "one", "prompt": "p"},
                    {"key": "two", "prompt": "p", "depends_on": ["one"]},
                ],
            }
        )
    )
    assert record.status is RunStatus.budget_exceeded and "budget spent" in record.error
    assert record.tasks["one"].merged_sha and record.tasks["two"].status is TaskStatus.pending
    assert len(record.batches) == 1 and record.usage.cost_usd > 1.0


def test_status_shows_task_and_run_cost(make_repo, write_taskset, run_taskset, pilot_server, settings):
    pilot_server.script(ScriptedReply(text="nothing to do", input_tokens=500_000))  # $1.00
    record = run_taskset(
        write_taskset(
            {
                "repo": str(make_repo()),
                "verify": "true",
                "agent": {"provider": "anthropic"},
                "tasks": [{"key": "t", "prompt": "p"}],
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "otto_farm", "status", record.run_id],
        env={**os.environ, **settings.env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "$1.0001" in proc.stdout and "cost $1.0001" in proc.stdout
