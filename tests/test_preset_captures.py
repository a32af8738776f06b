"""The presets' parsers on output captured from the real CLIs (tests/fixtures/cli_output/, the CLI's
version in each file's name), run against the scripted server (tests/test_real_clis.py makes such runs)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from otto_farm.agents import presets
from otto_farm.agents.base import AgentRequest
from otto_farm.agents.command import CommandAgent
from otto_farm.agents.presets import ParsedOutput
from otto_farm.models import AgentConfig
from otto_farm.taskrun import failure_code

from conftest import unsandboxed

FIXTURES = Path(__file__).parent / "fixtures" / "cli_output"


def parsed(output: str, name: str) -> ParsedOutput:
    result = presets.parse_output(output, (FIXTURES / name).read_text())
    assert result is not None
    return result


def test_claude_code_tokens_are_model_usage_summed():
    # After an Agent-tool call the result's `usage` counts the top-level calls only (300/30);
    # modelUsage counts the subagent's too, as the cost does.
    got = parsed("claude_json", "claude-code-2.1.197-subagent.json")
    assert (got.ok, got.stop_reason, got.final_message) == (True, "end_turn", "Wrote greeting.txt")
    assert (got.usage.input_tokens, got.usage.output_tokens) == (5300, 530)
    assert got.usage.cost_usd == pytest.approx(0.03975)
    plain = parsed("claude_json", "claude-code-2.1.197-write.json")
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (1900, 50)


def test_claude_code_api_error_is_labelled_with_its_status():
    got = parsed("claude_json", "claude-code-2.1.197-api-error-400.json")
    assert (got.ok, got.stop_reason, got.infrastructure) == (False, "api_error", True)
    assert got.error == "api_error 400: API Error: 400 messages.0.content: field required"


def test_claude_code_max_turns_and_not_logged_in():
    turns = parsed("claude_json", "claude-code-2.1.197-max-turns.json")
    assert (turns.ok, turns.stop_reason, turns.infrastructure) == (False, "max_turns", False)
    assert turns.error == "max_turns: Reached maximum number of turns (1)"
    login = parsed("claude_json", "claude-code-2.1.197-not-logged-in.json")
    assert (login.ok, login.stop_reason) == (False, "error")
    assert login.error == "error: Not logged in · Please run /login"


def test_claude_code_permission_denial_fails_a_clean_looking_run():
    got = parsed("claude_json", "claude-code-2.1.197-permission-denied.json")
    assert (got.ok, got.stop_reason) == (False, "permission_denied")
    assert got.error == "permission_denied: python3: Could not run python3."


def test_aider_cost_and_tokens_as_printed():
    got = parsed("aider_text", "aider-0.86.2-edit.txt")
    assert (got.ok, got.stop_reason, got.final_message) == (True, "end_turn", "Applied edit to greeting.txt")
    assert (got.usage.input_tokens, got.usage.output_tokens, got.usage.cost_usd) == (900, 40, 0.0033)
    # "7.5k sent, 800 cache write, 5.0k cache hit": the scripted reply was 900 in, 5,000 read, 800 written.
    cached = parsed("aider_text", "aider-0.86.2-cache.txt")
    usage = cached.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (900, 5000, 800)
    assert usage.cost_usd == pytest.approx(0.0078)


def test_aider_api_error_and_reflections_are_failures_though_it_exits_0():
    api = parsed("aider_text", "aider-0.86.2-api-error-400.txt")
    assert (api.ok, api.stop_reason, api.infrastructure) == (False, "api_error", True)
    assert api.error is not None and api.error.startswith("api_error 400: AnthropicException")
    gave_up = parsed("aider_text", "aider-0.86.2-reflections.txt")
    assert (gave_up.ok, gave_up.stop_reason, gave_up.infrastructure) == (False, "max_reflections", False)
    assert gave_up.error == "max_reflections: Only 3 reflections allowed, stopping."
    assert gave_up.usage.output_tokens == 4 * 40 and gave_up.usage.cost_usd == pytest.approx(4 * 0.0033)


def test_codex_usage_keeps_cache_writes_apart():
    got = parsed("codex_jsonl", "codex-0.171.0-reply.jsonl")
    assert (got.ok, got.final_message) == (True, "All done.")
    usage = got.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (900, 5000, 800)
    assert usage.output_tokens == 40


def test_codex_api_error_status_and_an_unreachable_api():
    api = parsed("codex_jsonl", "codex-0.171.0-api-error-404.jsonl")
    assert (api.ok, api.stop_reason, api.infrastructure) == (False, "api_error", True)
    assert api.error is not None and api.error.startswith("api_error 404: unexpected status 404 Not Found")
    dead = parsed("codex_jsonl", "codex-0.171.0-unreachable.jsonl")  # cut off by `timeout` after 40 s
    assert (dead.ok, dead.stop_reason) == (False, "error")
    assert dead.error == "Reconnecting... waiting for network (Connection failed: error sending request)"


REPLAY = """#!{python}
import sys
sys.stdin.read()
sys.stdout.write(open({fixture!r}).read())
sys.exit({code})
"""


def replay_cli(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    preset: str,
    binary: str,
    fixture: str,
    code: int,
    then: str = "",
) -> AgentRequest:
    """A stand-in `binary` on PATH that prints a capture of the real one and exits `code` (running `then`
    first); the command agent's request to run `preset` on `tmp_path`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / binary
    replay = REPLAY.format(python=sys.executable, fixture=str(FIXTURES / fixture), code=code)
    script.write_text(replay.replace(f"sys.exit({code})", f"{then}sys.exit({code})"))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return AgentRequest(
        worktree=tmp_path,
        prompt="p",
        config=AgentConfig(provider="command", preset=preset),
        env=dict(os.environ),
        sandbox=unsandboxed(tmp_path),
        timeout_s=50,
        run_id="r",
        task_key="t",
        attempt=1,
    )


@pytest.mark.parametrize(
    ("preset", "binary", "fixture", "code", "stop_reason", "label"),
    [
        (
            "claude-code",
            "claude",
            "claude-code-2.1.197-api-error-400.json",
            1,
            "api_error",
            "api_error 400",
        ),
        ("aider", "aider", "aider-0.86.2-api-error-400.txt", 0, "api_error", "api_error 400"),
        ("aider", "aider", "aider-0.86.2-reflections.txt", 0, "max_reflections", "max_reflections"),
    ],
)
def test_the_command_agent_reports_the_captured_failure(
    tmp_path, monkeypatch, preset, binary, fixture, code, stop_reason, label
):
    outcome = CommandAgent().run(replay_cli(tmp_path, monkeypatch, preset, binary, fixture, code))
    assert (outcome.ok, outcome.exit_code) == (False, code)
    assert outcome.stop_reason == stop_reason
    assert outcome.error is not None and (
        "api_error 400" in outcome.error or "max_reflections" in outcome.error
    )
    # An API error is the API's, not the agent's: the job ends there instead of trying again.
    assert failure_code(outcome) == ("agent_api_error" if stop_reason == "api_error" else "agent_error")


def test_a_codex_that_cannot_reach_its_api_ends_as_an_api_error_not_at_the_jobs_limit(tmp_path, monkeypatch):
    """Guards issue 16: Codex 0.171.0 waits for an unreachable API without end; its preset's
    `unreachable` line, seen twice, ends the attempt at once as an API error."""
    # It prints what the real one did, then waits on, as the real one would.
    wait = "sys.stdout.flush()\nimport time\ntime.sleep(60)\n"
    request = replay_cli(tmp_path, monkeypatch, "codex", "codex", "codex-0.171.0-unreachable.jsonl", 0, wait)
    started = time.monotonic()
    outcome = CommandAgent().run(request)
    assert time.monotonic() - started < 10
    assert not outcome.ok and outcome.infrastructure and failure_code(outcome) == "agent_api_error"
    waiting = "Reconnecting... waiting for network (Connection failed: error sending request)"
    assert outcome.error == f'agent CLI cannot reach its API: {{"type":"error","message":"{waiting}"}}'
