"""Agent presets: the real CommandAgent runs stand-in `claude`, `codex` and `aider` scripts put on PATH.

The stand-ins read the prompt the way each preset hands it over, edit a file in the worktree, record
what they received, and print what the real CLI prints: Claude Code's JSON result object, Codex's JSONL
events, Aider's plain text.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from otto_farm import resources, shell
from otto_farm.agents import presets
from otto_farm.agents.base import AgentOutcome, AgentRequest
from otto_farm.agents.command import CommandAgent
from otto_farm.errors import InputError
from otto_farm.models import AgentConfig
from otto_farm.taskset import load

from conftest import unsandboxed

PROMPT = "Add a greeting to hello.txt.\nSecond line of the prompt.\n"
WATCHED = [
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "CODEX_API_KEY",
    "UNLISTED_API_KEY",
    "OTTO_FARM_MODEL",
    "OTTO_FARM_PROMPT_FILE",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
]

STANDIN = """#!{python}
import json, os, sys
name, args = {name!r}, sys.argv[1:]
mode = os.environ.get("STANDIN_MODE", "ok")
if name == "aider":
    prompt = open(args[args.index("--message-file") + 1]).read()
else:
    prompt = sys.stdin.read()
with open("hello.txt", "a") as f:
    f.write(f"hello from {{name}}\\n")
seen = {{"argv": args, "prompt": prompt, "env": {{k: os.environ.get(k) for k in {watched!r}}}}}
with open(f".seen-{{name}}.json", "w") as f:
    json.dump(seen, f)
if name == "claude":
    usage = {{"input_tokens": 12, "output_tokens": 340, "cache_read_input_tokens": 5000,
              "cache_creation_input_tokens": 800}}
    result = {{"type": "result", "subtype": "success", "is_error": False, "duration_ms": 1234,
               "num_turns": 4, "result": "Added the greeting.", "session_id": "s-1",
               "total_cost_usd": 0.0421, "usage": usage}}
    if mode == "error":
        result.update(is_error=True, result="API Error: overloaded")
    if mode == "max_turns":
        result.update(subtype="error_max_turns", is_error=True, errors=["Reached maximum number of turns"])
        del result["result"]
    print(json.dumps(result))
    sys.exit(1 if mode == "max_turns" else 0)
if name == "codex":
    events = [
        {{"type": "thread.started", "thread_id": "th-1"}},
        {{"type": "turn.started"}},
        {{"type": "item.completed", "item": {{"id": "item_0", "type": "reasoning", "text": "thinking"}}}},
        {{"type": "item.completed", "item": {{"id": "item_1", "type": "agent_message", "text": "Looking."}}}},
        {{"type": "item.completed", "item": {{"id": "item_2", "type": "command_execution",
          "command": "bash -lc ls", "aggregated_output": "hello.txt\\n", "exit_code": 0,
          "status": "completed"}}}},
        {{"type": "item.completed", "item": {{"id": "item_3", "type": "agent_message",
          "text": "Added the greeting."}}}},
        {{"type": "turn.completed", "usage": {{"input_tokens": 24763, "cached_input_tokens": 24448,
          "output_tokens": 122}}}},
    ]
    if mode == "error":
        events[-1] = {{"type": "turn.failed", "error": {{"message": "stream disconnected"}}}}
    print("\\n".join(json.dumps(e) for e in events))
    sys.exit(1 if mode == "error" else 0)
print("Applied edit to hello.txt")
print("Tokens: 2.1k sent, 120 received.")
print("Added the greeting.")
"""


@pytest.fixture
def worker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A worker's scrubbed agent env, with stand-in CLIs first on PATH and some secrets in os.environ."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("claude", "codex", "aider"):
        script = bin_dir / name
        script.write_text(STANDIN.format(python=sys.executable, name=name, watched=WATCHED))
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-passed")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-passed")
    monkeypatch.setenv("UNLISTED_API_KEY", "must-not-leak")
    for name in ("CODEX_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OTTO_FARM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return shell.safe_env()


def run_agent(
    tmp_path: Path, env: dict[str, str], mode: str = "ok", **config: Any
) -> tuple[AgentOutcome, Path]:
    worktree = tmp_path / "wt"
    worktree.mkdir(exist_ok=True)
    request = AgentRequest(
        worktree=worktree,
        prompt=PROMPT,
        config=AgentConfig(**config),
        env={**env, "STANDIN_MODE": mode},
        sandbox=unsandboxed(worktree),
        timeout_s=60,
        run_id="r1",
        task_key="greet",
        attempt=1,
    )
    return CommandAgent().run(request), worktree


def seen(worktree: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((worktree / f".seen-{name}.json").read_text())
    return data


def test_claude_code_preset(tmp_path, worker_env):
    outcome, wt = run_agent(tmp_path, worker_env, preset="claude-code", model="claude-sonnet-4-5")
    assert (wt / "hello.txt").read_text() == "hello from claude\n"
    got = seen(wt, "claude")
    assert got["prompt"] == PROMPT  # on stdin
    assert got["argv"][:3] == ["-p", "--output-format", "json"]
    assert got["argv"][-2:] == ["--model", "claude-sonnet-4-5"]
    assert got["env"]["OTTO_FARM_MODEL"] == "claude-sonnet-4-5"
    # Listed for this preset: passed on. Not listed (here, or for this preset): scrubbed.
    assert got["env"]["ANTHROPIC_API_KEY"] == "sk-ant-passed"
    assert got["env"]["UNLISTED_API_KEY"] is None
    assert got["env"]["OPENAI_API_KEY"] is None
    assert (outcome.ok, outcome.stop_reason, outcome.exit_code) == (True, "end_turn", 0)
    assert outcome.final_message == "Added the greeting."
    usage = outcome.usage
    assert (usage.input_tokens, usage.output_tokens) == (12, 340)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (5000, 800)
    assert usage.cost_usd == pytest.approx(0.0421)


def test_claude_code_error_result_fails_and_keeps_its_cost(tmp_path, worker_env):
    outcome, _ = run_agent(tmp_path, worker_env, mode="error", preset="claude-code")
    assert (outcome.ok, outcome.stop_reason, outcome.exit_code) == (False, "error", 0)
    assert outcome.final_message == "API Error: overloaded"
    assert outcome.error is not None and "API Error: overloaded" in outcome.error
    assert outcome.usage.cost_usd == pytest.approx(0.0421)


def test_claude_code_max_turns_exits_nonzero(tmp_path, worker_env):
    outcome, _ = run_agent(tmp_path, worker_env, mode="max_turns", preset="claude-code")
    assert (outcome.ok, outcome.stop_reason, outcome.exit_code) == (False, "max_turns", 1)
    assert outcome.final_message == "Reached maximum number of turns"
    assert outcome.error == "agent command exited 1: max_turns: Reached maximum number of turns"
    assert outcome.usage.output_tokens == 340


def test_codex_preset(tmp_path, worker_env):
    outcome, wt = run_agent(tmp_path, worker_env, preset="codex", model="gpt-5-codex")
    assert (wt / "hello.txt").read_text() == "hello from codex\n"
    got = seen(wt, "codex")
    assert got["prompt"] == PROMPT
    assert got["argv"][:2] == ["exec", "--json"]
    assert got["argv"][-3:] == ["--model", "gpt-5-codex", "-"]  # `-`: the prompt is on stdin
    assert got["env"]["OPENAI_API_KEY"] == "sk-openai-passed"
    assert got["env"]["ANTHROPIC_API_KEY"] is None
    assert got["env"]["UNLISTED_API_KEY"] is None
    assert (outcome.ok, outcome.stop_reason) == (True, "end_turn")
    assert outcome.final_message == "Added the greeting."  # the last agent message
    usage = outcome.usage
    # Codex counts cached tokens inside input_tokens.
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (315, 24448, 122)
    assert usage.cost_usd == 0.0


def test_codex_turn_failed(tmp_path, worker_env):
    outcome, _ = run_agent(tmp_path, worker_env, mode="error", preset="codex")
    assert (outcome.ok, outcome.stop_reason, outcome.exit_code) == (False, "error", 1)
    assert outcome.final_message == "Added the greeting."
    assert outcome.error == "agent command exited 1: stream disconnected"


def test_aider_preset(tmp_path, worker_env):
    outcome, wt = run_agent(tmp_path, worker_env, preset="aider", model="sonnet")
    assert (wt / "hello.txt").read_text() == "hello from aider\n"
    got = seen(wt, "aider")
    assert got["prompt"] == PROMPT  # read from --message-file
    argv = got["argv"]
    assert argv[argv.index("--message-file") + 1] == got["env"]["OTTO_FARM_PROMPT_FILE"]
    assert {"--yes-always", "--no-git"} <= set(argv)  # the farm commits; the sandbox keeps git read-only
    assert argv[-2:] == ["--model", "sonnet"]
    # Aider's history files go beside the prompt file, not into the worktree that gets committed.
    prompt_dir = str(Path(got["env"]["OTTO_FARM_PROMPT_FILE"]).parent)
    assert argv[argv.index("--chat-history-file") + 1].startswith(prompt_dir + "/")
    assert got["env"]["ANTHROPIC_API_KEY"] == "sk-ant-passed"
    assert got["env"]["UNLISTED_API_KEY"] is None
    assert (outcome.ok, outcome.final_message) == (True, "Added the greeting.")
    assert outcome.usage.cost_usd == 0.0


def test_claude_code_gets_a_bearer_token_and_stays_off_its_vendors_other_hosts(
    tmp_path, worker_env, monkeypatch
):
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "bearer-passed")
    outcome, wt = run_agent(tmp_path, worker_env, preset="claude-code")
    got = seen(wt, "claude")
    assert got["env"]["ANTHROPIC_AUTH_TOKEN"] == "bearer-passed"
    assert got["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"


def test_codex_gets_its_base_url_through_c(tmp_path, worker_env):
    env = {**worker_env, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    _, wt = run_agent(tmp_path, env, preset="codex")
    argv = seen(wt, "codex")["argv"]
    assert argv[argv.index("-c") + 1] == "openai_base_url=http://127.0.0.1:9/v1"
    _, wt = run_agent(tmp_path, worker_env, preset="codex")
    assert "-c" not in seen(wt, "codex")["argv"]


def test_no_model_means_no_model_flag(tmp_path, worker_env):
    outcome, wt = run_agent(tmp_path, worker_env, preset="claude-code")
    assert outcome.ok
    got = seen(wt, "claude")
    assert "--model" not in got["argv"]
    assert got["env"]["OTTO_FARM_MODEL"] is None


def test_own_command_keeps_the_presets_parser_and_passthrough(tmp_path, worker_env):
    command = "claude -p --output-format json --permission-mode bypassPermissions"
    outcome, wt = run_agent(tmp_path, worker_env, preset="claude-code", command=command)
    got = seen(wt, "claude")
    assert "bypassPermissions" in got["argv"]
    assert got["env"]["ANTHROPIC_API_KEY"] == "sk-ant-passed"
    assert outcome.usage.cost_usd == pytest.approx(0.0421)


def test_unknown_preset_at_run_time(tmp_path, worker_env):
    outcome, _ = run_agent(tmp_path, worker_env, preset="nope")
    assert (outcome.ok, outcome.error) == (False, "unknown agent preset 'nope'")


def test_the_packaged_presets():
    known = presets.load_presets()
    assert set(known) == {"claude-code", "codex", "aider"}
    assert {p.output for p in known.values()} == {"claude_json", "codex_jsonl", "aider_text"}
    assert all(p.env_passthrough for p in known.values())


def test_presets_are_found_inside_a_wheel(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "otto_farm"
    (package / "_config").mkdir(parents=True)
    (package / "_config" / "agent-presets.toml").write_text('[x]\ncommand = "x"\n')
    (tmp_path / "site-packages" / "config").mkdir()  # someone else's top-level `config`: skipped
    monkeypatch.setattr(resources, "PACKAGE_DIR", package)
    assert presets.presets_path() == package / "_config" / "agent-presets.toml"


def test_claude_parser_reads_stream_json_and_rejects_other_output():
    stream = "\n".join(
        [
            json.dumps({"type": "system", "subtype": "init"}),
            json.dumps({"type": "assistant", "message": {"content": []}}),
            json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "done"}),
        ]
    )
    parsed = presets.parse_claude_json(stream)
    assert parsed is not None and (parsed.ok, parsed.final_message) == (True, "done")
    assert presets.parse_claude_json("Error: not logged in\n") is None
    assert presets.parse_claude_json('{"result": "truncat') is None


def test_codex_parser_skips_log_lines_and_needs_a_completed_turn():
    assert presets.parse_codex_jsonl("plain text\n") is None
    partial = 'ed","text":"cut"}}\nReading prompt from stdin...\n' + json.dumps({"type": "turn.started"})
    parsed = presets.parse_codex_jsonl(partial)
    assert parsed is not None
    assert (parsed.ok, parsed.error) == (False, "no turn.completed event")
    # A stream error the CLI recovered from: the turn that completed after it decides.
    events = [
        {"type": "error", "message": "Reconnecting... 1/5"},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 2}},
    ]
    parsed = presets.parse_codex_jsonl("\n".join(json.dumps(e) for e in events))
    assert parsed is not None and parsed.ok and parsed.usage.input_tokens == 10


@pytest.fixture
def repo_set(make_repo, write_taskset):
    def write(agent: dict[str, Any]) -> Path:
        path: Path = write_taskset(
            {"repo": str(make_repo()), "agent": agent, "tasks": [{"key": "a", "prompt": "do a"}]}
        )
        return path

    return write


def test_taskset_unknown_preset(repo_set):
    path = repo_set({"preset": "claude"})
    with pytest.raises(InputError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: agent.preset: unknown preset 'claude' (known: aider, claude-code, codex)"
    )


def test_taskset_preset_without_command(repo_set):
    path = repo_set({"preset": "codex", "model": "gpt-5-codex"})
    # A default agent command (OTTO_FARM_AGENT_COMMAND) does not replace the preset's.
    agent = load(path, agent_command="my-agent").taskset.agent
    assert (agent.provider, agent.preset, agent.command, agent.model) == (
        "command",
        "codex",
        None,
        "gpt-5-codex",
    )
