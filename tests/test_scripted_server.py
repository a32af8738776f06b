"""The scripted Messages-API server, driven by the real anthropic SDK over loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import anthropic
import pytest
from anthropic.types import TextBlock, ToolUseBlock

from otto_farm.scripted_server import ScriptedReply, ScriptedServer, fingerprint

pytestmark = pytest.mark.timeout(30)

MODEL = "claude-test"
USER = [{"role": "user", "content": "Pick one."}]
DECIDE = {
    "name": "decide",
    "description": "Record the decision.",
    "input_schema": {"type": "object", "properties": {"action": {"type": "string"}}, "required": ["action"]},
}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def client(server: ScriptedServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="test-key", base_url=server.url, max_retries=2) as c:
        yield c


def create(client, **kwargs):
    return client.messages.create(model=MODEL, max_tokens=100, messages=USER, **kwargs)


def test_forced_tool_call(server, client):
    server.script(ScriptedReply(tool_input={"action": "retry"}, input_tokens=123, output_tokens=45))
    msg = create(client, tools=[DECIDE], tool_choice={"type": "tool", "name": "decide"})
    (block,) = msg.content
    assert isinstance(block, ToolUseBlock)
    assert (block.name, block.input) == ("decide", {"action": "retry"})
    assert block.id.startswith("toolu_")
    assert (msg.model, msg.role, msg.stop_reason, msg.stop_sequence) == (MODEL, "assistant", "tool_use", None)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (123, 45)
    assert msg.usage.cache_read_input_tokens == 0


def test_text_then_tool_uses_first_tool_without_tool_choice(server, client):
    other = {**DECIDE, "name": "other"}
    server.script(ScriptedReply(text="Thinking.", tool_input={"action": "skip"}))
    msg = create(client, tools=[other, DECIDE])
    assert [type(b) for b in msg.content] == [TextBlock, ToolUseBlock]
    assert isinstance(msg.content[1], ToolUseBlock) and msg.content[1].name == "other"


def test_tool_input_without_tools_in_request_is_a_400(server, client):
    server.script(ScriptedReply(tool_input={"action": "x"}))
    with pytest.raises(anthropic.BadRequestError, match="names no tool"):
        create(client)


def test_text_reply_and_stop_reason_override(server, client):
    server.script(ScriptedReply(text="Hello."), ScriptedReply(text="Trunc", stop_reason="max_tokens"))
    first, second = create(client), create(client)
    assert isinstance(first.content[0], TextBlock) and first.content[0].text == "Hello."
    assert (first.stop_reason, second.stop_reason) == ("end_turn", "max_tokens")
    assert first.id != second.id


def test_overloaded_then_success_is_retried_at_once(server, client):
    server.script(ScriptedReply(status=529), ScriptedReply(text="ok"))
    started = time.monotonic()
    msg = create(client)
    assert isinstance(msg.content[0], TextBlock) and msg.content[0].text == "ok"
    assert len(server.requests) == 2
    assert time.monotonic() - started < 0.3  # the SDK backs off at least 0.375 s unless told otherwise


def test_500_more_often_than_retries_raises(server, client):
    server.script(*[ScriptedReply(status=500, text="boom")] * 3)
    with pytest.raises(anthropic.InternalServerError, match="boom"):
        create(client)
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_error_status_has_anthropic_error_body(server, client, status, error, kind):
    server.script(ScriptedReply(status=status))
    with pytest.raises(error) as info:
        create(client.with_options(max_retries=0))
    assert info.value.status_code == status
    assert (info.value.type, info.value.api_message) == (kind, f"scripted error {status}")


def test_delay_beyond_client_timeout(server, client):
    server.script(ScriptedReply(text="late", delay_s=5))
    with pytest.raises(anthropic.APITimeoutError):
        create(client.with_options(max_retries=0, timeout=0.5))
    started = time.monotonic()
    server.stop()  # wakes the handler still sleeping out its delay
    assert time.monotonic() - started < 1


def test_garbage_body_with_200(server, client):
    server.script(ScriptedReply(raw_body="<html>oops"), ScriptedReply(raw_body="{}"))
    # Not an anthropic.APIError: the SDK lets the JSON decode error through.
    with pytest.raises(json.JSONDecodeError):
        create(client)
    # Not validated either: a JSON object of the wrong shape becomes a Message full of None.
    msg = create(client)
    assert (msg.id, msg.content, msg.usage) == (None, None, None)


def test_request_is_recorded_with_secrets_fingerprinted(server):
    server.script(ScriptedReply(tool_input={"action": "go"}))
    with anthropic.Anthropic(api_key="test-key", base_url=server.url) as c:
        create(c, tools=[DECIDE], tool_choice={"type": "tool", "name": "decide"})
    body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": USER}).encode()
    secrets = {"x-api-key": "other-key", "authorization": "Bearer secret"}
    plain = urllib.request.Request(f"{server.url}/v1/messages", data=body, headers=secrets, method="POST")
    with pytest.raises(urllib.error.HTTPError):  # the script is spent: a 500, recorded all the same
        urllib.request.urlopen(plain)
    req, raw = server.requests
    assert req.path == "/v1/messages"
    assert req.body["model"] == MODEL and req.body["messages"] == USER
    assert req.body["tools"] == [DECIDE]
    assert req.body["tool_choice"] == {"type": "tool", "name": "decide"}
    assert "anthropic-version" in req.headers
    # Secret headers are recorded as fingerprints: which secret went where shows, the secret does not.
    assert fingerprint("Bearer test-key") in req.headers.values() or req.headers["x-api-key"] == fingerprint(
        "test-key"
    )
    assert raw.headers["x-api-key"] == fingerprint("other-key") != fingerprint("test-key")
    assert raw.headers["authorization"] == fingerprint("Bearer secret")
    assert not any(s in repr(server.requests) for s in ("secret", "test-key", "other-key"))
    server.clear()
    assert server.requests == []


@pytest.mark.parametrize(
    "schema, problem",
    [
        ({"type": "array"}, "Input should be 'object'"),
        ({"anyOf": [{"type": "object"}]}, "Input should be 'object'"),
        ({"type": "object", "oneOf": [{"required": ["a"]}]}, "does not support oneOf, allOf, or anyOf"),
    ],
)
def test_a_tool_schema_the_api_refuses_is_a_400_and_takes_no_reply(server, client, schema, problem):
    server.script(ScriptedReply(tool_input={"action": "go"}))
    with pytest.raises(anthropic.BadRequestError, match=problem):
        create(client, tools=[{**DECIDE, "input_schema": schema}])
    assert create(client, tools=[DECIDE]).content[0].input == {"action": "go"}


def test_exhausted_script_is_a_clear_500_without_retries(server, client):
    with pytest.raises(anthropic.InternalServerError, match="script exhausted"):
        create(client)
    assert len(server.requests) == 1


def test_add_appends_and_script_replaces(server, client):
    server.script(ScriptedReply(text="dropped"))
    server.script(ScriptedReply(text="a"))
    server.add(ScriptedReply(text="b"))
    texts = [create(client).content[0] for _ in range(2)]
    assert [b.text for b in texts if isinstance(b, TextBlock)] == ["a", "b"]


def test_from_file_and_main(tmp_path):
    path = tmp_path / "replies.json"
    path.write_text(json.dumps([{"text": "from file"}, {"tool_input": {"action": "x"}, "output_tokens": 7}]))
    with ScriptedServer.from_file(path) as srv, anthropic.Anthropic(api_key="k", base_url=srv.url) as c:
        assert create(c).content[0] == TextBlock(text="from file", type="text")
        assert create(c, tools=[DECIDE]).usage.output_tokens == 7

    cmd = [sys.executable, "-m", "otto_farm.scripted_server", "--script", str(path)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with anthropic.Anthropic(api_key="k", base_url=url) as c:
            assert create(c).content[0] == TextBlock(text="from file", type="text")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0


def test_bad_script_file_is_refused(tmp_path):
    path = tmp_path / "replies.json"
    path.write_text(json.dumps([{"txt": "typo"}]))
    with pytest.raises(TypeError, match="txt"):
        ScriptedServer.from_file(path)
    path.write_text(json.dumps({"text": "not a list"}))
    with pytest.raises(ValueError, match="list"):
        ScriptedServer.from_file(path)
