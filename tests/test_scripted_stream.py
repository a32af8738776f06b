"""The scripted server speaks what real clients speak: the SDK's streaming, HEAD, count_tokens, its log."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import anthropic
import pytest
from anthropic.types import TextBlock, ToolUseBlock

from otto_farm.scripted_server import ScriptedReply, ScriptedServer, fingerprint

pytestmark = pytest.mark.timeout(30)

MODEL = "claude-test"
USER = [{"role": "user", "content": "Write the file."}]
WRITE = {
    "name": "Write",
    "description": "Write a file.",
    "input_schema": {
        "type": "object",
        "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["file_path", "content"],
    },
}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def client(server: ScriptedServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="test-key", base_url=server.url, max_retries=0) as c:
        yield c


def test_stream_assembles_text_and_tool_call_with_usage(server, client):
    content = "hello, world\n" * 5  # longer than one delta: the SDK must put the pieces together
    server.script(
        ScriptedReply(
            text="I will write it.",
            tool_input={"file_path": "/w/greeting.txt", "content": content},
            input_tokens=900,
            output_tokens=40,
            cache_read_tokens=300,
            cache_write_tokens=20,
        )
    )
    kinds = []
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER, tools=[WRITE]) as stream:
        for event in stream:
            kinds.append(event.type)
        msg = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "input_json" in kinds and kinds.count("content_block_stop") == 2
    text, call = msg.content
    assert isinstance(text, TextBlock) and text.text == "I will write it."
    assert isinstance(call, ToolUseBlock)
    assert (call.name, call.input) == ("Write", {"file_path": "/w/greeting.txt", "content": content})
    assert (msg.stop_reason, msg.id, msg.model) == ("tool_use", "msg_1", MODEL)
    usage = msg.usage
    assert (usage.input_tokens, usage.output_tokens) == (900, 40)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (300, 20)
    (req,) = server.requests
    assert req.body["stream"] is True


def test_stream_of_an_empty_text_and_a_stop_reason(server, client):
    server.script(ScriptedReply(text="", stop_reason="max_tokens", output_tokens=0))
    with client.messages.stream(model=MODEL, max_tokens=1, messages=USER) as stream:
        msg = stream.get_final_message()
    (block,) = msg.content
    assert isinstance(block, TextBlock) and block.text == ""
    assert (msg.stop_reason, msg.usage.output_tokens) == ("max_tokens", 0)


def test_streamed_error_is_the_apis_error(server, client):
    server.script(ScriptedReply(status=400, text="prompt is too long"))
    stream = client.messages.stream(model=MODEL, max_tokens=10, messages=USER)
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"), stream:
        pass


def test_head_and_count_tokens_take_no_reply(server, client):
    server.script(ScriptedReply(text="the one reply"))
    head = urllib.request.Request(server.url, method="HEAD")
    with urllib.request.urlopen(head) as answer:
        assert (answer.status, answer.read()) == (200, b"")
    counted = client.messages.count_tokens(model=MODEL, messages=USER, tools=[WRITE])
    assert counted.input_tokens > 0
    longer = client.messages.count_tokens(model=MODEL, messages=USER * 20, tools=[WRITE])
    assert longer.input_tokens > counted.input_tokens
    msg = client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert isinstance(msg.content[0], TextBlock) and msg.content[0].text == "the one reply"
    routes = [(r.method, urlsplit(r.path).path) for r in server.requests]
    assert routes == [
        ("HEAD", "/"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/messages"),
    ]


def test_unknown_route_is_a_json_404(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.url}/v1/models")
    assert info.value.code == 404
    assert "no route GET /v1/models" in json.loads(info.value.read())["error"]["message"]


def test_main_logs_each_request_as_a_json_line(tmp_path):
    script, log = tmp_path / "replies.json", tmp_path / "requests.jsonl"
    script.write_text(json.dumps([{"text": "logged"}]))
    cmd = [sys.executable, "-m", "otto_farm.scripted_server", "--script", str(script), "--log", str(log)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        with anthropic.Anthropic(api_key="secret-key", base_url=url, max_retries=0) as c:
            events = list(c.messages.create(model=MODEL, max_tokens=10, messages=USER, stream=True))
        assert [e.type for e in events][:: len(events) - 1] == ["message_start", "message_stop"]
        proc.terminate()
        proc.wait(timeout=5)
    (line,) = log.read_text().splitlines()
    entry = json.loads(line)
    assert (entry["method"], entry["path"]) == ("POST", "/v1/messages")
    assert entry["body"]["messages"] == USER and entry["body"]["stream"] is True
    secrets = {entry["headers"].get("x-api-key"), entry["headers"].get("authorization")}
    assert secrets & {fingerprint("secret-key"), fingerprint("Bearer secret-key")}
    assert "secret-key" not in log.read_text()


def test_main_refuses_a_log_it_cannot_write(tmp_path):
    script = tmp_path / "replies.json"
    script.write_text("[]")
    cmd = [sys.executable, "-m", "otto_farm.scripted_server", "--script", str(script)]
    bad_log = str(tmp_path / "no" / "such.jsonl")
    done = subprocess.run([*cmd, "--log", bad_log], capture_output=True, text=True)
    assert done.returncode == 2
    assert "such.jsonl" in done.stderr.splitlines()[-1]


def responses(url: str, body: dict) -> list[dict]:
    """POST /v1/responses, as Codex CLI does, and the events of its stream."""
    data = json.dumps({"model": "gpt-test", "stream": True, **body}).encode()
    req = urllib.request.Request(f"{url}/v1/responses", data=data, method="POST")
    with urllib.request.urlopen(req) as answer:
        assert answer.headers["content-type"] == "text/event-stream"
        text = answer.read().decode()
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_responses_stream_for_codex(server):
    server.script(
        ScriptedReply(
            text="Writing it.", tool_name="exec", tool_input={"input": "await tools.apply_patch('x')"}
        ),
        ScriptedReply(
            tool_name="shell", tool_input={"command": ["ls"]}, input_tokens=100, cache_read_tokens=5000
        ),
    )
    first = responses(server.url, {"input": []})
    kinds = [e["type"] for e in first]
    assert (kinds[0], kinds[-1]) == ("response.created", "response.completed")
    assert "".join(e["delta"] for e in first if e["type"] == "response.output_text.delta") == "Writing it."
    message, call = first[-1]["response"]["output"]
    assert message["content"][0]["text"] == "Writing it."
    assert (call["type"], call["name"], call["input"]) == (
        "custom_tool_call",
        "exec",
        "await tools.apply_patch('x')",
    )
    second = responses(server.url, {"input": []})
    (call,) = second[-1]["response"]["output"]
    assert (call["type"], json.loads(call["arguments"])) == ("function_call", {"command": ["ls"]})
    usage = second[-1]["response"]["usage"]
    # As the Responses API counts them: cached input inside input_tokens.
    assert (usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"]) == (5100, 5000)
