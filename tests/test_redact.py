"""Secrets the worker knows never reach the run store or the LLM: redact.py, on a real Redis and SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from otto_farm import keys, redact, taskrun
from otto_farm.agents.anthropic_agent import AnthropicAgent
from otto_farm.gitops import git
from otto_farm.models import Attempt, TaskResult, TaskStatus
from otto_farm.redact import Redactor, known_secrets
from otto_farm.scripted_server import ScriptedReply
from otto_farm.store import Store, new_run_id

from conftest import NO_GATE, anthropic_request, make_record, run_by_hand

TOKEN = "tok-1234567890abcdef"  # a secret-named variable's value
ENV_PW = "env-pass-5555"  # the password in a result backend URL from the environment
FILE_PW = "file/pass-9876"  # in the settings file's broker URL, percent-encoded there as file%2Fpass-9876
SECRETS = (TOKEN, ENV_PW, FILE_PW, "file%2Fpass-9876")


@pytest.fixture
def known(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A worker that knows a token, a URL password in its environment and one in its settings file.

    The session's own settings are objects built by conftest, so these variables change no connection.
    """
    config = tmp_path / "otto-farm.toml"
    config.write_text('broker_url = "amqp://farm:file%2Fpass-9876@rabbit:5672//"\n')
    monkeypatch.setenv("OTTO_FARM_CONFIG", str(config))
    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)
    monkeypatch.setenv("OTTO_FARM_RESULT_BACKEND", f"redis://:{ENV_PW}@redis:6379/0")


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_values_and_url_passwords_of_every_kind_are_known() -> None:
    environ = {
        "MY_SERVICE_TOKEN": TOKEN,
        "OTTO_FARM_BROKER_URL": "amqp://user:p%40ss-word99@rabbit//",
        "HTTPS_PROXY": "http://proxy-user:proxy-pass-1@proxy:3128",  # not secret-named: its URL is
        "HOME": "/home/someone",
        "SHORT_KEY": "abc123",
    }
    r = Redactor(known_secrets(environ, ["rediss://default:tls-pass-77@r:6380/0", None]))
    text = f"{TOKEN} p%40ss-word99 p@ss-word99 proxy-pass-1 tls-pass-77 /home/someone abc123 user"
    assert r.clean(text) == " ".join(["[redacted]"] * 5 + ["/home/someone abc123 user"])
    assert r.clean("amqp://user:p%40ss-word99@elsewhere//") == "amqp://[redacted]@elsewhere//"  # userinfo
    assert r.clean("amqp://user:p%40ss-word99@rabbit//") == "[redacted]"  # the variable's whole value


def test_the_longest_secret_is_replaced_whole_and_short_values_stay() -> None:
    r = Redactor(["abcdefgh12", "abcdefgh1234567", "1234567", ""])
    assert r.clean("x abcdefgh1234567 abcdefgh12 1234567 y") == "x [redacted] [redacted] 1234567 y"


def test_metacharacters_and_quotes_are_redacted_and_json_stays_valid() -> None:
    secret = 'pa"ss\\w.*(rd)+$|[x]'
    r = Redactor([secret])
    dumped = json.dumps(r.data({"out": f"before {secret} after", "list": [secret, 3, None]}))
    assert json.loads(dumped) == {"out": "before [redacted] after", "list": ["[redacted]", 3, None]}
    assert json.dumps(secret)[1:-1] not in dumped  # nor its JSON-escaped form


def test_a_broken_settings_file_leaves_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTTO_FARM_CONFIG", "/nonexistent/otto-farm.toml")
    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)
    assert redact.redactor().clean(TOKEN) == "[redacted]"


def test_the_redactor_is_built_once_while_the_environment_stays(known: None) -> None:
    r = redact.redactor()
    assert redact.redactor() is r
    assert r.clean(("ordinary output line\n" * 50_000) + TOKEN).endswith("[redacted]")


def run_bytes(store: Store, run_id: str) -> str:
    """Every value under the run's keys, read by type."""
    out = []
    for key in store.redis.keys(f"{keys.run_key(run_id)}*"):
        kind = store.redis.type(key)
        read: Any = {
            "string": store.redis.get,
            "hash": store.redis.hgetall,
            "stream": lambda k: store.redis.xrange(k),
            "set": store.redis.smembers,
            "zset": lambda k: store.redis.zrange(k, 0, -1),
        }[kind]
        out.append(f"{key} {read(key)}")
    return "\n".join(out)


def test_no_secret_reaches_any_byte_of_the_run_in_redis(store: Store, known: None) -> None:
    record = make_record([{"key": "t", "prompt": "p"}], {})
    record.run_id = new_run_id()
    record.tasks["t"].status, record.tasks["t"].runs = TaskStatus.running, 1
    store.create(record)
    printed = f"env: {TOKEN}\nurl: amqp://farm:file%2Fpass-9876@rabbit// or {FILE_PW}\npw={ENV_PW}"
    attempt = Attempt(number=1, agent_output=printed, verify_output=printed, final_message=printed)
    result = TaskResult(
        run_id=record.run_id,
        task_key="t",
        run_no=1,
        batch=0,
        status=TaskStatus.failed,
        error=printed,
        attempts=[attempt],
        verify_tail=printed,
        diff_stat=printed,
    )
    kept = store.add_result(result)
    store.put_transcript(record.run_id, "t", 1, 1, [{"role": "tool", "output": printed, "is_error": False}])
    store.emit(record.run_id, "task_phase", task="t", detail=printed)
    everything = run_bytes(store, record.run_id)
    assert "results" in everything and "transcripts" in everything and "events" in everything
    assert leaks(everything) == [] and leaks(kept.model_dump_json()) == []
    stored = store.get(record.run_id).tasks["t"].results[0]
    assert stored.task_key == "t" and stored.status is TaskStatus.failed  # identifiers are kept
    assert stored.attempts[0].agent_output.startswith("env: [redacted]\nurl: amqp://[redacted]@rabbit//")
    assert store.transcript(record.run_id, "t", 1, 1)[0]["output"] == stored.error


PROMPT = "Read the credentials."


def test_the_model_never_gets_a_secret_a_tool_printed(
    pilot_server: Any, monkeypatch: pytest.MonkeyPatch, known: None, make_repo: Any
) -> None:
    """bash reads the token from a file, not from its (scrubbed) environment: the worker knows the value."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", pilot_server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-redact-0123456789")
    repo = make_repo({"creds.txt": f"{TOKEN}\n{ENV_PW}\n{FILE_PW}\n"})
    pilot_server.script(
        ScriptedReply(tool_name="bash", tool_input={"command": "cat creds.txt"}),
        ScriptedReply(text="done"),
    )
    outcome = AnthropicAgent().run(anthropic_request(repo, PROMPT))
    assert outcome.ok
    # Its own second call (the session's server may also hear a late job of an earlier test's).
    ours = [r.body for r in pilot_server.requests if r.body and r.body["messages"][0]["content"] == PROMPT]
    result = ours[-1]["messages"][-1]["content"][0]
    assert len(ours) == 2 and result["type"] == "tool_result" and result["content"].count("[redacted]") == 3
    assert leaks(json.dumps([r.body for r in pilot_server.requests])) == []
    assert leaks(json.dumps(outcome.transcript)) == []


def test_a_secret_verify_prints_reaches_neither_the_store_nor_the_next_attempt(
    store: Store, known: None, make_repo, write_taskset, tmp_path: Path
) -> None:
    """A task's verify prints a token it read from a file of the repository (not from its environment);
    the worker knows that token: the next attempt's prompt and every stored byte of the run have it
    redacted."""
    data = {
        "repo": str(make_repo({"creds.txt": f"token={TOKEN}\n"})),
        **NO_GATE,
        "max_attempts": 2,
        "max_task_runs": 1,
        "verify": "cat creds.txt; exit 1",
        "agent": {"command": 'cat "$OTTO_FARM_PROMPT_FILE" >> prompts.log'},
        "tasks": [{"key": "a", "prompt": "p"}],
    }
    with run_by_hand(store, write_taskset(data)) as run_id:
        result = taskrun.run(store, tmp_path / "work", run_id, "a", 1, 0)
    assert result.status is TaskStatus.failed and len(result.attempts) == 2
    cache = next((tmp_path / "work").glob("repos/*/cache.git"))
    prompts = git(["show", f"{result.commit_sha}:prompts.log"], cwd=cache)
    assert "Previous attempt failed" in prompts and "token=[redacted]" in prompts, prompts
    assert leaks(prompts) == [] and leaks(run_bytes(store, run_id)) == []
